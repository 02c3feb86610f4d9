# The UperNet recipe of configs/upernet_convnext_t_ade20k.py on the toy ADE20K-format dataset
# (python tools/make_toy_data.py --dataset ade20k): the same segmentor (UPerHead + auxiliary
# FCN head), augmentation, losses, AdamW with stage-wise decay, poly schedule and slide test.
# What differs: the data (5 of ADE20K's classes) and crop size; the model size (ConvNeXt-atto
# trained from scratch, since no pretrained weights are reachable here, and heads 8x narrower);
# the schedule and lr. `make demo-seg` trains and tests it in about 3.5 minutes on 2 CPU cores
# (mIoU 0.97 on the toy val split).
_base_ = '../upernet_convnext_t_ade20k.py'

data_root = 'data/toy_ade20k/'
# A subset of ADE20K's classes: the loader maps their ADE20K ids to 0..4 (the rest to ignore).
metainfo = dict(classes=('sky', 'grass', 'box', 'signboard', 'ball'),
                palette=[(135, 206, 235), (60, 180, 75), (255, 165, 0), (220, 20, 60),
                         (145, 30, 180)])
num_classes = len(metainfo['classes'])

crop_size = (128, 128)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='atto', drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=64, num_classes=num_classes),
    auxiliary_head=dict(in_channels=160, channels=32, num_classes=num_classes),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(85, 85)))

# The recipe's augmentation at the toy images' scale (192x256; ADE20K is trained at 512 short side).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(1024, 192), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 192), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 1000
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(interval=max_iters // 2, max_keep_ckpts=2))

# A fixed seed makes the demo's figures repeatable (runs with other seeds vary by a few points).
randomness = dict(seed=0)
