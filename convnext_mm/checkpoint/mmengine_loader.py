"""mmengine's checkpoint loading routed through the restricted unpickler.

mmengine 0.10 reads checkpoints (``--resume``, ``load_from``, ``tools/test.py``)
with a plain ``torch.load``: unrestricted on torch < 2.6, and on torch >= 2.6
restricted but failing on mmengine's own checkpoints. Here local files and
http(s) URLs are read by ``convnext_mm.checkpoint.io.load_checkpoint_file``
(``weights_only=True``, ``.safetensors`` too) with exactly the non-tensor
objects of mmengine checkpoints allow-listed.
"""
import pickle

import torch

from .io import load_checkpoint_file


def _history_buffer_method(owner, name):
    """Stands in for ``builtins.getattr`` while unpickling a checkpoint.

    mmengine pickles ``HistoryBuffer``'s statistics methods (min, max, mean,
    current) as ``getattr(HistoryBuffer, 'min')``. A real ``getattr`` would let
    a crafted pickle walk from any allowed object to arbitrary code, so only
    those lookups are answered.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    if owner is HistoryBuffer:
        if name in ('min', 'max', 'mean', 'current'):  # registered by every HistoryBuffer
            return getattr(HistoryBuffer, name)
        if name in HistoryBuffer._statistics_methods:  # custom ones registered in this process
            return HistoryBuffer._statistics_methods[name]
    raise pickle.UnpicklingError(
        f'Refused getattr({owner!r}, {name!r}) in a checkpoint: only the statistics methods '
        f'of mmengine\'s HistoryBuffer are allowed')


def allow_mmengine_checkpoint_globals() -> None:
    """Allow-list, for ``torch.load(weights_only=True)``, exactly the non-tensor
    objects that mmengine 0.10 writes into its checkpoints: the message hub's
    ``HistoryBuffer`` (with its statistics methods) and the numpy arrays,
    dtypes and scalars inside it.

    torch >= 2.6 loads with ``weights_only=True`` by default, so ``--resume``
    fails on mmengine's own checkpoints without this; the restricted unpickler
    stays on for everything else.
    """
    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = [type(np.dtype(name)) for name in ('float64', 'float32', 'int64', 'int32')]
    torch.serialization.add_safe_globals(
        [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype] + dtype_classes +
        [(_history_buffer_method, 'builtins.getattr')])


def load_from_restricted(filename, map_location=None):
    # mmengine logs "Loads checkpoint by <name without load_from_> backend"
    return load_checkpoint_file(filename, map_location=map_location or 'cpu')


def use_restricted_checkpoint_loading() -> None:
    """Make mmengine's ``CheckpointLoader`` read local paths and http(s) URLs through
    the restricted unpickler. Done on ``import convnext_mm``; calling again is harmless.
    """
    from mmengine.runner.checkpoint import CheckpointLoader
    allow_mmengine_checkpoint_globals()
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_restricted, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), loader=load_from_restricted,
                                     force=True)
