# UperNet, ConvNeXt-L (ImageNet-22K weights), ADE20K, 640x640 crops, 160k iterations, fp32 (no AMP, as in the official recipe).
# Paper: 53.2 / 53.7 mIoU (single / multi-scale). 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05, stage-wise decay 0.9 over 12 layers.
_base_ = [
    './_base_/upernet_convnext.py',
    'mmseg::_base_/datasets/ade20k_640x640.py',
    './_base_/convnext_ade20k_160k.py',
]

crop_size = (640, 640)
pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth'  # or a local path
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='large',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))

train_dataloader = dict(batch_size=2)  # x 8 GPUs

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=12))
