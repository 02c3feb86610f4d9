# Cascade Mask R-CNN, ConvNeXt-L (ImageNet-22K weights), COCO 3x (36 epochs), fp32 (no AMP, as in the official recipe).
# Paper: 54.8 box AP / 47.6 mask AP. 8 GPUs x 2 images; AdamW lr 1e-4, wd 0.05, layer-wise decay 0.7 over 12 layers.
_base_ = ['./_base_/cascade_mask_rcnn_convnext_fpn.py', './_base_/convnext_coco_3x.py']

pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth'  # or a local path
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768, 1536]))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=12))
