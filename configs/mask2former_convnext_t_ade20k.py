# Mask2Former (semantic segmentation), ConvNeXt-T (ImageNet-1K weights), ADE20K 512x512, 160k
# iterations, 8 GPUs x 2 images. mmseg's Mask2Former recipe (mask2former_r50 / swin-t
# _8xb2-160k_ade20k-512x512.py: MSDeformAttn pixel decoder, 100 queries, 9 decoder layers,
# AdamW lr 1e-4 wd 0.05, gradient clipping 0.01, poly schedule; backbone lr x0.1, no weight decay
# on norms and query / level embeddings) with the ConvNeXt-T backbone, drop path 0.3 (as the
# Swin-T recipe) and, on top, the stage-wise layer decay of our UperNet T recipe (0.9 over 6).
# These settings are ours: no number is published for ConvNeXt with Mask2Former (mmseg's Swin-T
# recipe: 48.66 mIoU).
_base_ = 'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmdet.models', 'convnext_mm'], allow_failed_imports=False)
pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'  # or a local path
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
custom_hooks = [dict(type='LayerDecayLrLogHook')]
