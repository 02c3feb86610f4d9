# UperNet, ConvNeXt-T (ImageNet-1K weights), ADE20K, 512x512 crops, 160k iterations, AMP.
# Paper: 46.0 mIoU single-scale / 46.7 multi-scale. 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05, stage-wise decay 0.9 over 6 layers.
_base_ = [
    './_base_/upernet_convnext.py',
    'mmseg::_base_/datasets/ade20k.py',
    './_base_/convnext_ade20k_160k.py',
]

crop_size = (512, 512)
pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'  # or a local path
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]),
    auxiliary_head=dict(in_channels=384),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

train_dataloader = dict(batch_size=2)  # x 8 GPUs

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
