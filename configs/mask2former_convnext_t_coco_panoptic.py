# Mask2Former (panoptic segmentation), ConvNeXt-T (ImageNet-1K weights), COCO panoptic,
# large-scale jitter at 1024, 368,750 iterations, 8 GPUs x 2 images. mmdet's Mask2Former recipe
# (mask2former_r50 / swin-t-p4-w7-224_8xb2-lsj-50e_coco-panoptic.py: MSDeformAttn pixel decoder,
# 100 queries, 9 decoder layers, AdamW lr 1e-4 wd 0.05, gradient clipping 0.01; backbone lr
# x0.1, no weight decay on norms and query / level embeddings) with the ConvNeXt-T backbone, drop
# path 0.3 (as the Swin-T recipe) and, on top, the layer-wise decay of our Cascade T recipe (0.7
# over 6). These settings are ours: no number is published for ConvNeXt with Mask2Former.
_base_ = 'mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco-panoptic.py'

custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)
pretrained = 'https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'  # or a local path
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    panoptic_head=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
custom_hooks = [dict(type='LayerDecayLrLogHook')]
