"""Training curves of one or more work dirs, from mmengine's ``vis_data/scalars.json``.

    python tools/plot_curves.py WORK_DIR [WORK_DIR ...] [--keys loss lr bbox_mAP mIoU]
                                [--out curves.png]

One panel per key, one line per work dir (several runs side by side). A key matches a logged
scalar by its name or its last part (``bbox_mAP`` matches ``coco/bbox_mAP``); by default the
panels are ``loss``, ``lr`` and every validation metric the runs logged. Training scalars are
drawn against the iteration, validation metrics against the step mmengine logged them at
(epoch or iteration). A work dir trained in several sessions (``--resume``) is read in order.
"""
import argparse
import glob
import json
import os.path as osp
from collections import defaultdict

TRAINING_KEYS = ('loss', 'lr')
NOT_CURVES = {'step', 'iter', 'epoch', 'time', 'data_time', 'memory', 'base_lr'}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Training curves of mmengine work dirs')
    parser.add_argument('work_dirs', nargs='+', metavar='WORK_DIR')
    parser.add_argument('--keys', nargs='+', help='scalars to draw (default: loss, lr and '
                        'every validation metric)')
    parser.add_argument('--out', default='curves.png', help='picture to write')
    return parser.parse_args(argv)


def read_scalars(work_dir: str) -> dict:
    """{scalar name: [(step, value), ...]} of every run in ``work_dir``, oldest first."""
    paths = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not paths:
        raise FileNotFoundError(f'{work_dir!r}: no */vis_data/scalars.json (is it an mmengine '
                                f'work dir of a training run?)')
    series = defaultdict(list)
    for path in paths:
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                for name, value in row.items():
                    if name not in NOT_CURVES and isinstance(value, (int, float)):
                        series[name].append((row['step'], value))
    return series


def match(key: str, names) -> list:
    return sorted(name for name in names if name == key or name.split('/')[-1] == key)


def choose_keys(keys, runs: dict) -> list:
    """The scalar names to draw, one panel each; an unknown key is an error listing the
    available ones."""
    names = set().union(*runs.values())
    if not keys:
        metrics = [name for name in names if '/' in name]  # validation: 'coco/bbox_mAP', ...
        keys = [k for k in TRAINING_KEYS if k in names] + sorted(metrics)
    chosen = []
    for key in keys:
        found = match(key, names)
        if not found:
            raise KeyError(f'no logged scalar named {key!r}; the runs logged: {sorted(names)}')
        chosen += [name for name in found if name not in chosen]
    return chosen


def plot(runs: dict, names: list, out: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        for label, series in runs.items():
            if series.get(name):
                steps, values = zip(*series[name])
                ax.plot(steps, values, label=label, marker='o' if len(steps) < 20 else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if name == 'lr':
            ax.ticklabel_format(axis='y', style='sci', scilimits=(0, 0))
    axes[-1, 0].set_xlabel('step (iteration; epoch for per-epoch validation)')
    axes[0, 0].legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    runs = {osp.basename(osp.normpath(d)): read_scalars(d) for d in args.work_dirs}
    names = choose_keys(args.keys, runs)
    plot(runs, names, args.out)
    print(f'{len(names)} curves ({", ".join(names)}) of {len(runs)} run(s) -> {args.out}')


if __name__ == '__main__':
    main()
