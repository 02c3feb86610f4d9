# upernet_convnext_xl_in22k_ade20k_640.py trained with FSDP (configs/_base_/fsdp.py).
_base_ = ['./upernet_convnext_xl_in22k_ade20k_640.py', './_base_/fsdp.py']
custom_imports = dict(imports=['convnext_mm', 'convnext_mm.engine.fsdp_strategy'],
                      allow_failed_imports=False)
