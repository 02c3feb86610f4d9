import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(HERE, 'convnext_mm', '__init__.py')) as f:
        return re.search(r"__version__ = '([^']+)'", f.read()).group(1)


def config_files():
    """configs/ ships inside the package as convnext_mm/.mim/configs."""
    files = []
    for dirpath, _, names in os.walk(os.path.join(HERE, 'configs')):
        files += [os.path.relpath(os.path.join(dirpath, n), HERE) for n in names if n.endswith('.py')]
    return files


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
        'torch>=1.13',
        'mmengine>=0.10.0,<1.0',
        'safetensors',
    ],
    extras_require={
        # mmcv has no universal wheel; install it with mim or from source first.
        'det': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0,<3.4', 'pycocotools'],
        'seg': ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.0,<1.3', 'ftfy', 'regex'],
        'all': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0,<3.4', 'mmsegmentation>=1.0,<1.3',
                'pycocotools', 'ftfy', 'regex', 'timm'],
        'tests': ['pytest', 'timm', 'torchvision'],
    },
    data_files=[],
    include_package_data=True,
    zip_safe=False,
)
