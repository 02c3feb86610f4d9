# Mask R-CNN, ConvNeXt V2-B fine-tuned from FCMAE pre-training (ImageNet-1K images, no labels),
# COCO, large-scale jitter at 1024 x 1024, 36 epochs, AMP, 8 GPUs x 4 images.
# The values are those of mmdetection's projects/ConvNeXt-V2 config (52.9 box / 46.4 mask AP
# there, a "pre-release"): the V2 paper and its repository publish no detection recipe, so
# drop path 0.4, layer-wise decay 0.95 over 12 layers, lr 1e-4 and soft-NMS are mmdetection's
# choices, not the paper's.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', './_base_/convnext_coco_3x.py']

# The official FCMAE encoder (the decoder is dropped on loading); mmpretrain's
# convnext-v2-base_3rdparty-fcmae_in1k file loads as well.
pretrained = ('https://dl.fbaipublicfiles.com/convnext/convnextv2/pt_only/'
              'convnextv2_base_1k_224_fcmae.pt')
image_size = (1024, 1024)
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='base',
        use_grn=True,
        drop_path_rate=0.4,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]),
    test_cfg=dict(rcnn=dict(nms=dict(type='soft_nms'))))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomResize', scale=image_size, ratio_range=(0.1, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_type='absolute_range', crop_size=image_size,
         recompute_bbox=True, allow_negative_crop=True),
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-2, 1e-2)),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=4, num_workers=8, dataset=dict(pipeline=train_pipeline))
auto_scale_lr = dict(base_batch_size=32)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end={{_base_.max_epochs}}, by_epoch=True,
         milestones=[27, 33], gamma=0.1),
]
optim_wrapper = dict(
    optimizer=dict(lr=1e-4),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=12))
