"""Inference speed (images/s) of a whole detector or segmentor, as mmdet's benchmark measures it.

    python tools/benchmark.py CONFIG [CHECKPOINT] [--num-images 50] [--warmup 5]
                              [--cfg-options k=v ...]

Images come from the config's test dataloader through its test pipeline (so at the recipe's
test resolution, e.g. 1333x800 or 2048x512 with slide inference). Where that dataset is not
on disk, the toy dataset of tools/make_toy_data.py is written to a temporary folder and used
instead, with a note; only its images matter here. The timed part is `model.test_step`
(preprocessing on the device, the forward pass and post-processing), one image per batch,
after `--warmup` images; data loading is not timed. Without a checkpoint the weights are
random, which does not change the amount of work except in the detector's post-processing.
"""
import argparse
import contextlib
import io
import os.path as osp
import sys
import tempfile
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402

from tools.get_flops import build_model  # noqa: E402
from tools.make_toy_data import CLASSES as TOY_COCO_CLASSES  # noqa: E402
from tools.make_toy_data import main as make_toy_data  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Inference speed of a model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint (default: random weights)')
    parser.add_argument('--num-images', type=int, default=50, help='images timed')
    parser.add_argument('--warmup', type=int, default=5, help='images run before timing')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.warmup < 0:
        parser.error(f'--num-images must be >= 1 and --warmup >= 0, got {args.num_images}, '
                     f'{args.warmup}')
    for name in ('config', 'checkpoint'):
        path = getattr(args, name)
        if path is not None and not osp.isfile(path):
            parser.error(f'{name} file not found: {path!r}')
    return args


def dataset_on_disk(dataset) -> bool:
    root = dataset.get('data_root', '')
    if 'ann_file' in dataset and dataset.ann_file:
        return osp.isfile(osp.join(root, dataset.ann_file))
    return osp.isdir(osp.join(root, dataset.get('data_prefix', {}).get('img_path', '')))


def use_toy_data(cfg, scope: str, folder: str, num_images: int) -> None:
    """Point the test dataloader at ``num_images`` (at most 60) freshly written toy images of
    the config's kind."""
    kind = 'coco' if scope == 'mmdet' else 'ade20k'
    with contextlib.redirect_stdout(io.StringIO()):
        make_toy_data(['--dataset', kind, '--out', folder, '--num-train', '1', '--num-val',
                       str(min(num_images, 60))])
    dataset = cfg.test_dataloader.dataset
    dataset.data_root = folder
    if kind == 'coco':
        dataset.ann_file = 'annotations/instances_val.json'
        dataset.data_prefix = dict(img='val/')
        dataset.metainfo = dict(classes=TOY_COCO_CLASSES)
    else:
        dataset.data_prefix = dict(img_path='images/validation',
                                   seg_map_path='annotations/validation')
    print(f'{kind} test data not found: timing on toy images written to {folder}')


def build(cfg, checkpoint, device):
    model = build_model(cfg)
    if checkpoint:
        from mmengine.runner import load_checkpoint  # restricted since convnext_mm is imported
        load_checkpoint(model, checkpoint, map_location='cpu')
    if device == 'cpu':
        from mmengine.model import revert_sync_batchnorm
        model = revert_sync_batchnorm(model)
    return model.to(device).eval()


def benchmark(cfg, checkpoint=None, num_images=50, warmup=5, device='cpu') -> float:
    """Images per second of ``model.test_step`` on the config's test data (or toy data)."""
    from mmengine.runner import Runner
    import convnext_mm  # noqa: F401  (registers ConvNeXt for configs without custom_imports)
    scope = cfg.get('default_scope')
    loader_cfg = cfg.test_dataloader
    loader_cfg.batch_size, loader_cfg.num_workers = 1, 0
    loader_cfg.persistent_workers = False
    with tempfile.TemporaryDirectory() as folder:
        if not dataset_on_disk(loader_cfg.dataset):
            use_toy_data(cfg, scope, folder, num_images + warmup)
        model = build(cfg, checkpoint, device)
        loader = Runner.build_dataloader(loader_cfg)
        timed, elapsed = 0, 0.
        with torch.no_grad():
            while timed < num_images:
                for index, data in enumerate(loader):
                    if device.startswith('cuda'):
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    model.test_step(data)
                    if device.startswith('cuda'):
                        torch.cuda.synchronize()
                    if warmup > 0:
                        warmup -= 1
                        continue
                    elapsed += time.perf_counter() - start
                    timed += 1
                    if timed == num_images:
                        break
    return num_images / elapsed


def main(argv=None):
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    fps = benchmark(cfg, args.checkpoint, args.num_images, args.warmup, args.device)
    where = torch.cuda.get_device_name() if args.device.startswith('cuda') else \
        f'CPU, {torch.get_num_threads()} threads'
    print(f'{osp.basename(args.config)}: {fps:.2f} images/s ({args.num_images} images, {where})')


if __name__ == '__main__':
    main()
