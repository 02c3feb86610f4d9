# FSDP (mmengine's FlexibleRunner): each of N GPUs keeps 1/N of the parameters, gradients and
# AdamW states, which DDP keeps whole on every GPU (16 bytes per parameter; docs/scale.md). One
# FSDP unit per ConvNeXt block; checkpoints are whole (rank 0 writes the usual file, which
# tools/test.py and --resume read). A recipe inheriting it adds
# 'convnext_mm.engine.fsdp_strategy' to its custom_imports (a key bases may not share).
runner_type = 'FlexibleRunner'
strategy = dict(
    type='ConvNeXtFSDPStrategy',
    model_wrapper=dict(auto_wrap_policy='convnext_block_wrap_policy', use_orig_params=True),
    state_dict_cfg='full')
