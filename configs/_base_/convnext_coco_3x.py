# What every ConvNeXt COCO recipe of the paper shares: the 3x schedule, AMP, multi-scale +
# crop augmentation and AdamW with layer-wise lr decay. The model comes from
# cascade_mask_rcnn_convnext_fpn.py (or mmdet's Mask R-CNN); the recipe configs set arch,
# pretrained weights, drop path, lr and decay (see configs/cascade_convnext_t_coco.py).
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['convnext_mm'], allow_failed_imports=False)

# Multi-scale training (short side 480-800 step 32, long side <= 1333), or the
# resize-crop-resize branch (as in DETR / Sparse R-CNN).
train_scales = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 1333), (500, 1333), (600, 1333)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]

# AMP (AmpOptimWrapper's loss scale is dynamic); the fp32 recipes (L, XL) set type='OptimWrapper'.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6),
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))

# 8 GPUs x 2 images; --auto-scale-lr scales the lr for other total batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Checkpoints written atomically (a killed run never leaves a half-written one for --resume)
# and a NaN/inf loss stops training before it is saved (convnext_mm.engine.hooks).
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='FiniteLossHook'), dict(type='LayerDecayLrLogHook')]
