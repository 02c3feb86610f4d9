# upernet_convnext_xl_in22k_ade20k_640.py trained with FSDP (mmengine's FlexibleRunner): each of
# N GPUs keeps 1/N of the parameters, gradients and AdamW states, about 16 bytes per parameter
# under DDP (docs/scale.md). One FSDP unit per ConvNeXt block; checkpoints are whole (rank 0
# writes the usual file, which tools/test.py and --resume read).
_base_ = './upernet_convnext_xl_in22k_ade20k_640.py'

custom_imports = dict(imports=['convnext_mm', 'convnext_mm.engine.fsdp_strategy'],
                      allow_failed_imports=False)
runner_type = 'FlexibleRunner'
strategy = dict(
    type='ConvNeXtFSDPStrategy',
    model_wrapper=dict(auto_wrap_policy='convnext_block_wrap_policy', use_orig_params=True),
    state_dict_cfg='full')
