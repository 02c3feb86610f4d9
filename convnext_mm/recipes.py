"""Where the shipped recipes are, and how configs outside this repository inherit them.

A wheel carries ``configs/`` twice over, both written by ``setup.py``:

- ``convnext_mm/.mim/configs/NAME.py``: the text configs themselves, as mmdet and
  mmseg ship theirs;
- ``convnext_mm/configs/NAME.py``: a one-line mmengine pure-Python config per recipe
  that reads the text config above, so that any config file, anywhere, can inherit it::

      from mmengine.config import read_base
      with read_base():
          from convnext_mm.configs.cascade_convnext_t_coco import *

      optim_wrapper.optimizer.lr = 1e-4

mmengine 0.10.7 resolves ``_base_ = ['pkg::...']`` only for the packages in its own
``MODULE2PACKAGE`` table, so text configs cannot name this package; its pure-Python
configs import bases by module path, and a base may compute its variables.
"""
import os.path as osp


def get_config_path(name: str) -> str:
    """Path of a config shipped with the package, e.g. 'cascade_convnext_t_coco.py'.

    Installed packages carry configs/ as convnext_mm/.mim/configs; a source
    checkout also finds them in the repository's configs/.
    """
    here = osp.dirname(osp.abspath(__file__))
    for root in (osp.join(here, '.mim', 'configs'), osp.join(osp.dirname(here), 'configs')):
        path = osp.join(root, name)
        if osp.isfile(path):
            return path
    raise FileNotFoundError(f'No shipped config named {name!r} (looked in {here}/.mim/configs '
                            f'and the source tree)')


def recipe_variables(name: str) -> dict:
    """The variables of the shipped text config ``name``, with its ``_base_`` chain resolved
    and its ``custom_imports`` imported: what ``from convnext_mm.configs.NAME import *``
    gives a pure-Python config."""
    from mmengine.config import Config
    return Config.fromfile(get_config_path(name)).to_dict()

