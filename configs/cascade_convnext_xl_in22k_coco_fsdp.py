# cascade_convnext_xl_in22k_coco.py trained with FSDP (configs/_base_/fsdp.py).
_base_ = ['./cascade_convnext_xl_in22k_coco.py', './_base_/fsdp.py']
custom_imports = dict(imports=['convnext_mm', 'convnext_mm.engine.fsdp_strategy'],
                      allow_failed_imports=False)
