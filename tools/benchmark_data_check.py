"""Time the label-map scan that tools/train.py runs before training a segmentation config.

    python tools/benchmark_data_check.py [--num 2000] [--size 512 512] [--workers 2]

Writes ``--num`` JPEG images with PNG label maps (random classes 0-149 and 255) into a
temporary folder, then times ``check_label_maps`` in one process and in ``--workers``
processes (default: one per core).
"""
import argparse
import os
import os.path as osp
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from convnext_mm.utils.data_contents import check_label_maps  # noqa: E402


def write_pairs(folder, num, size):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size + (3, ), dtype=np.uint8))
    pairs = []
    for i in range(num):
        img_path, seg_path = osp.join(folder, f'{i}.jpg'), osp.join(folder, f'{i}.png')
        image.save(img_path)
        blocks = rng.integers(0, 151, (size[0] // 16, size[1] // 16)).astype(np.uint8)
        labels = np.where(blocks == 150, 255, blocks).repeat(16, 0).repeat(16, 1)
        Image.fromarray(labels).save(seg_path)
        pairs.append((img_path, seg_path))
    return pairs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num', type=int, default=2000)
    parser.add_argument('--size', type=int, nargs=2, default=[512, 512], metavar=('H', 'W'))
    parser.add_argument('--workers', type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_pairs(folder, args.num, tuple(args.size))
        times = {}
        for workers in (1, args.workers):
            start = time.perf_counter()
            report = check_label_maps(pairs, 150, workers=workers)
            times[workers] = time.perf_counter() - start
            assert not report.problems, report.lines()
        print(f'{args.num} label maps of {args.size[0]}x{args.size[1]}: '
              f'{times[1]:.1f} s in 1 process, {times[args.workers]:.1f} s in {args.workers} '
              f'({times[1] / times[args.workers]:.2f}x)')


if __name__ == '__main__':
    main()
