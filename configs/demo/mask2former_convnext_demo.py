# configs/mask2former_convnext_t_ade20k.py on the toy ADE20K-format dataset
# (python tools/make_toy_data.py --dataset ade20k): the same segmentor type, losses, optimizer
# settings and layer decay. What differs: the data (5 of ADE20K's classes) and crop size, the
# model size (ConvNeXt-atto from scratch; 20 queries, 3 decoder layers, 2 pixel-decoder layers,
# 1024 sampled points, 64 channels) and the schedule. `python tools/train.py` on it takes about 3.5
# minutes on 2 CPU cores (mIoU 0.95 on the toy val split, seed 0).
_base_ = '../mask2former_convnext_t_ade20k.py'

data_root = 'data/toy_ade20k/'
metainfo = dict(classes=('sky', 'grass', 'box', 'signboard', 'ball'),
                palette=[(135, 206, 235), (60, 180, 75), (255, 165, 0), (220, 20, 60),
                         (145, 30, 180)])
num_classes = len(metainfo['classes'])
crop_size = (128, 128)
width = 64

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='atto', drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(
        in_channels=[40, 80, 160, 320],
        feat_channels=width,
        out_channels=width,
        num_classes=num_classes,
        num_queries=20,
        pixel_decoder=dict(
            encoder=dict(num_layers=2, layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=width),
                ffn_cfg=dict(embed_dims=width, feedforward_channels=4 * width))),
            positional_encoding=dict(num_feats=width // 2)),
        positional_encoding=dict(num_feats=width // 2),
        transformer_decoder=dict(num_layers=3, layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=width),
            cross_attn_cfg=dict(embed_dims=width),
            ffn_cfg=dict(embed_dims=width, feedforward_channels=4 * width))),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=1024)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(1024, 192), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 192), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', power=0.9, eta_min=0.0, by_epoch=False, begin=50, end=max_iters),
]
optim_wrapper = dict(optimizer=dict(lr=3e-4))
default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(interval=max_iters // 2, max_keep_ckpts=2, save_best=None))
randomness = dict(seed=0)
