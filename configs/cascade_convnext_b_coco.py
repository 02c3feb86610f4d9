# Cascade Mask R-CNN, ConvNeXt-B (ImageNet-1K weights), COCO 3x (36 epochs), AMP.
# Paper: 52.7 box AP / 45.6 mask AP. 8 GPUs x 2 images; AdamW lr 2e-4, wd 0.05, layer-wise decay 0.8 over 12 layers.
_base_ = ['./_base_/cascade_mask_rcnn_convnext_fpn.py', './_base_/convnext_coco_3x.py']

pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth'  # or a local path
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.7,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))
