import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def randomize_(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Give every parameter random values so that no block is a near no-op.

    Fresh ConvNeXts have layer scale 1e-6 and zero GRN weights, which would let
    a test pass with the blocks wired wrongly.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                is_norm_weight = isinstance(module, torch.nn.LayerNorm) and name == 'weight'
                p.copy_(float(is_norm_weight) + scale * torch.randn_like(p))
    return model
