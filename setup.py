import os
import re
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, 'convnext_mm', '__init__.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


PURE_PYTHON_BASE = """\
# configs/{name} as an mmengine pure-Python config base (written by setup.py):
#     with read_base():
#         from {module} import *
globals().update(__import__('convnext_mm').recipes.recipe_variables('{name}'))
"""


def ship_configs():
    """Put configs/ into the package twice (convnext_mm/recipes.py says why): as
    convnext_mm/.mim/configs, where OpenMMLab tools look for a package's text configs,
    and as convnext_mm/configs, one generated pure-Python config base per file that reads
    its text config, so a config anywhere can inherit ours through ``read_base()``."""
    source = os.path.join(HERE, 'configs')
    if not os.path.isdir(source):
        return
    target = os.path.join(HERE, 'convnext_mm', '.mim', 'configs')
    if not os.path.islink(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        try:  # a link keeps an editable install in step with configs/
            os.symlink(os.path.join('..', '..', 'configs'), target)
        except OSError:
            shutil.copytree(source, target)

    bases = os.path.join(HERE, 'convnext_mm', 'configs')
    shutil.rmtree(bases, ignore_errors=True)
    for folder, _, files in os.walk(source):
        for file in files:
            if not file.endswith('.py'):
                continue
            name = os.path.relpath(os.path.join(folder, file), source).replace(os.sep, '/')
            module = 'convnext_mm.configs.' + name[:-len('.py')].replace('/', '.')
            path = os.path.join(bases, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                f.write(PURE_PYTHON_BASE.format(name=name, module=module))


ship_configs()


setup(
    name='convnext_mm',
    version=read_version(),
    description='ConvNeXt backbones, layer-wise lr decay and recipes for mmdet 3.x / mmseg 1.x',
    long_description=open(os.path.join(HERE, 'README.md')).read() if os.path.exists(
        os.path.join(HERE, 'README.md')) else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['convnext_mm', 'convnext_mm.*']),
    python_requires='>=3.8',
    install_requires=[
        'torch>=2.6',  # add_safe_globals with (function, name) entries; weights_only default
        'mmengine>=0.10.0,<1.0',
        'safetensors',
    ],
    extras_require={
        # mmcv has no universal wheel; install it with mim or from source first.
        'det': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0,<3.4', 'pycocotools'],
        'seg': ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.0,<1.3', 'ftfy', 'regex'],
        'all': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0,<3.4', 'mmsegmentation>=1.0,<1.3',
                'pycocotools', 'ftfy', 'regex', 'timm', 'onnx>=1.16', 'onnxscript>=0.5',
                'onnxruntime>=1.18', 'huggingface_hub'],
        # checkpoints named hf-hub:OWNER/NAME
        'hub': ['huggingface_hub'],
        # tools/export_onnx.py: torch's dynamo exporter writes through onnxscript;
        # onnxruntime checks the file against PyTorch.
        'export': ['onnx>=1.16', 'onnxscript>=0.5', 'onnxruntime>=1.18'],
        'tests': ['pytest', 'pytest-xdist', 'timm', 'torchvision', 'transformers'],
    },
    package_data={'convnext_mm': ['.mim/configs/*.py', '.mim/configs/*/*.py', 'configs/*.py',
                                  'configs/*/*.py']},
    zip_safe=False,
)
