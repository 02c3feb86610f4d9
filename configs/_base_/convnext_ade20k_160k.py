# What every ConvNeXt ADE20K recipe of the paper shares: 160k iterations with a 1500-iteration
# linear warm-up then poly decay to 0, AMP, AdamW with stage-wise lr decay.
# The dataset base (512 or 640 crop) and the model come from the recipe config
# (see configs/upernet_convnext_t_ade20k.py).
_base_ = [
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]

# AMP (AmpOptimWrapper's loss scale is dynamic); the fp32 recipes (L, XL) set type='OptimWrapper'.
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))

# The recipes train on 8 GPUs x 2 images (train_dataloader.batch_size=2 there, since the
# dataset base owns the dataloaders); --auto-scale-lr scales the lr for other total batch sizes.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# Checkpoints written atomically (a killed run never leaves a half-written one for --resume)
# and a NaN/inf loss stops training before it is saved (convnext_mm.engine.hooks).
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='FiniteLossHook'), dict(type='LayerDecayLrLogHook')]
