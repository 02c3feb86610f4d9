# Cascade Mask R-CNN, ConvNeXt-T (ImageNet-1K weights), COCO 3x (36 epochs), AMP.
# Paper: 50.4 box AP / 43.7 mask AP. 8 GPUs x 2 images; AdamW lr 2e-4, wd 0.05, layer-wise decay 0.7 over 6 layers.
_base_ = ['./_base_/cascade_mask_rcnn_convnext_fpn.py', './_base_/convnext_coco_3x.py']

pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'  # or a local path
model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.4,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
