# The Cascade Mask R-CNN recipe of configs/cascade_convnext_t_coco.py on the toy dataset
# (python tools/make_toy_data.py): the same detector structure, augmentation branches, losses,
# AdamW with layer-wise decay and AMP setting. What differs: the data and image size; the
# model size (ConvNeXt-atto trained from scratch, since no pretrained weights are reachable
# here, and neck and heads 4x narrower); the RoI sampling sizes; the schedule and lr.
# `make demo-det` trains and tests it in about 4 minutes on 2 CPU cores.
_base_ = '../cascade_convnext_t_coco.py'

data_root = 'data/toy_coco/'
metainfo = dict(classes=('circle', 'square', 'triangle'),
                palette=[(220, 20, 60), (0, 130, 200), (60, 180, 75)])
num_classes = len(metainfo['classes'])

# Toy images hold at most 4 objects: sample 32 RoIs per image (COCO: 512) from 100
# proposals (COCO: 2000), which cuts the 4conv1fc heads' cost, the bulk of a CPU step.
rcnn_train = [dict(stage, sampler=dict(stage.sampler, num=32)) for stage in _base_.model.train_cfg.rcnn]
# The same neck and heads (FPN, RPN, three 4conv1fc box heads, 4-conv mask head) at 64
# channels instead of 256, and 256-wide fc layers instead of 1024.
width = 64
bbox_heads = [
    dict(head, num_classes=num_classes, in_channels=width, conv_out_channels=width,
         fc_out_channels=4 * width) for head in _base_.model.roi_head.bbox_head
]
model = dict(
    backbone=dict(arch='atto', drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=bbox_heads,
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(num_classes=num_classes, in_channels=width, conv_out_channels=width)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=300, max_per_img=100), rcnn=rcnn_train),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=50)))
del rcnn_train, bbox_heads

# The recipe's augmentation at a quarter of the size: toy images are 192x192 where COCO
# images are about 640x480 and trained at 480-800 x 1333.
train_scales = [(short, 320) for short in range(120, 201, 8)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize', scales=[(100, 320), (125, 320), (150, 320)],
                     keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(96, 150),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=train_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(320, 200), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11],
         gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=5e-4))
auto_scale_lr = dict(base_batch_size=2)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=4, max_keep_ckpts=2))

# A fixed seed makes the demo's figures repeatable (runs with other seeds vary by a few points).
randomness = dict(seed=0)
