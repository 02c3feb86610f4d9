import os
import re
import shutil

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, 'convnext_mm', '__init__.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def ship_configs():
    """Copy configs/ to convnext_mm/.mim/configs, where OpenMMLab tools look for a
    package's configs (``Config.fromfile('convnext_mm::cascade_convnext_t_coco.py')``)."""
    source = os.path.join(HERE, 'configs')
    target = os.path.join(HERE, 'convnext_mm', '.mim', 'configs')
    if not os.path.isdir(source) or os.path.islink(target):
        return
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.rmtree(target, ignore_errors=True)
    try:  # a link keeps an editable install in step with configs/
        os.symlink(os.path.join('..', '..', 'configs'), target)
    except OSError:
        shutil.copytree(source, target)


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
                'onnxruntime>=1.18'],
        # tools/export_onnx.py: torch's dynamo exporter writes through onnxscript;
        # onnxruntime checks the file against PyTorch.
        'export': ['onnx>=1.16', 'onnxscript>=0.5', 'onnxruntime>=1.18'],
        'tests': ['pytest', 'pytest-xdist', 'timm', 'torchvision'],
    },
    package_data={'convnext_mm': ['.mim/configs/*.py', '.mim/configs/*/*.py']},
    zip_safe=False,
)
