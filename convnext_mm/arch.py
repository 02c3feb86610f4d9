"""The ConvNeXt architecture table, shared by the backbone and the checkpoint converter."""
from typing import Dict, List

NUM_STAGES = 4
STAGE_STRIDES = (4, 8, 16, 32)

# Blocks per stage and channels per stage (Liu et al. 2022, Table 9; atto..nano and huge from
# ConvNeXt V2, Woo et al. 2023).
ARCH_SETTINGS: Dict[str, Dict[str, List[int]]] = {
    'atto': dict(depths=[2, 2, 6, 2], channels=[40, 80, 160, 320]),
    'femto': dict(depths=[2, 2, 6, 2], channels=[48, 96, 192, 384]),
    'pico': dict(depths=[2, 2, 6, 2], channels=[64, 128, 256, 512]),
    'nano': dict(depths=[2, 2, 8, 2], channels=[80, 160, 320, 640]),
    'tiny': dict(depths=[3, 3, 9, 3], channels=[96, 192, 384, 768]),
    'small': dict(depths=[3, 3, 27, 3], channels=[96, 192, 384, 768]),
    'base': dict(depths=[3, 3, 27, 3], channels=[128, 256, 512, 1024]),
    'large': dict(depths=[3, 3, 27, 3], channels=[192, 384, 768, 1536]),
    'xlarge': dict(depths=[3, 3, 27, 3], channels=[256, 512, 1024, 2048]),
    'huge': dict(depths=[3, 3, 27, 3], channels=[352, 704, 1408, 2816]),
}
