"""Run a trained detector or segmentor on images, with mmdet's ``DetInferencer`` or
mmseg's ``MMSegInferencer`` (the config's ``default_scope`` decides).

    python tools/infer.py CONFIG CHECKPOINT INPUTS... [--out-dir outputs] [--score-thr 0.3]
                          [--device cpu|cuda|cuda:N] [--cfg-options k=v ...]

INPUTS are image files, folders (their images, sorted) and glob patterns. Per image NAME.EXT:
  detection     OUT/vis/NAME.EXT    boxes, masks and class names scoring above --score-thr
                OUT/preds/NAME.json mmdet's prediction (labels, scores, bboxes, RLE masks of
                                    every detection the config's test_cfg keeps) plus
                                    label_names and the image's path
  segmentation  OUT/vis/NAME.EXT    the image and its colour-coded prediction side by side
                OUT/preds/NAME.png  the class index of each pixel
                OUT/preds/NAME.json pixels per predicted class, image path and size
Inputs that are missing or unreadable are reported together after every good one is
written (exit status 1).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from collections import Counter

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import DictAction  # noqa: E402

from convnext_mm.checkpoint import check_checkpoint_file, check_fits_model  # noqa: E402
from convnext_mm.utils import load_model_config  # noqa: E402

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Run a detector or segmentor on images')
    parser.add_argument('config', help='config file of the model')
    parser.add_argument('checkpoint', help='checkpoint file of that config')
    parser.add_argument('inputs', nargs='+', help='image files, folders or glob patterns')
    parser.add_argument('--out-dir', default='outputs', help='where vis/ and preds/ go')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this (0-1)')
    parser.add_argument('--device', default=None,
                        help='cpu, cuda or cuda:N (default: cuda when available)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if not 0 <= args.score_thr <= 1:
        parser.error(f'--score-thr must be within [0, 1], got {args.score_thr}')
    return args


def choose_device(device):
    if device is None:
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if device != 'cpu' and not (device == 'cuda' or device.startswith('cuda:')):
        raise ValueError(f'--device must be cpu, cuda or cuda:N, got {device!r}')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'--device {device}: no CUDA device on this machine; use --device cpu')
    return device


def expand_inputs(inputs):
    """The images named by files, folders and globs (in order, once each), and the
    (input, reason) pairs of those that name none."""
    images, problems = [], []
    for item in inputs:
        if osp.isdir(item):
            found = sorted(osp.join(item, name) for name in os.listdir(item)
                           if name.lower().endswith(IMAGE_EXTENSIONS))
            reason = f'folder without images ({", ".join(IMAGE_EXTENSIONS)})'
        elif glob.has_magic(item):
            found = sorted(path for path in glob.glob(item, recursive=True) if osp.isfile(path))
            reason = 'pattern matches no file'
        else:
            found = [item] if osp.isfile(item) else []
            reason = 'no such file or folder'
        images.extend(found)
        if not found:
            problems.append((item, reason))
    images = list(dict.fromkeys(images))
    clashes = [name for name, count in Counter(map(osp.basename, images)).items() if count > 1]
    if clashes:
        raise ValueError(f'Outputs are named after the image files, and several inputs are '
                         f'called {clashes[0]!r} ({len(clashes)} such names): infer each '
                         f'folder into its own --out-dir')
    return images, problems


def strict_weights(inferencer_class, checkpoint_path):
    """``inferencer_class`` refusing a checkpoint that does not fit the config's model
    (mmengine loads it non-strictly and only warns); ``checkpoint_path`` names it."""

    class StrictWeights(inferencer_class):
        def _load_weights_to_model(self, model, checkpoint, cfg):
            if checkpoint is not None:
                check_fits_model(model, checkpoint, checkpoint_path, cfg.filename)
            super()._load_weights_to_model(model, checkpoint, cfg)

    return StrictWeights


def build_inferencer(cfg, checkpoint, device):
    if cfg.default_scope == 'mmdet':
        from mmdet.apis import DetInferencer as inferencer_class
    else:
        from mmseg.apis import MMSegInferencer as inferencer_class
    inferencer_class = strict_weights(inferencer_class, checkpoint)
    inferencer = inferencer_class(model=cfg, weights=checkpoint, device=device)
    inferencer.show_progress = False  # one bar over all inputs instead
    return inferencer


def write_json(data, path):
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(data, f)


def infer_detection(inferencer, image, out_dir, score_thr):
    result = inferencer(image, out_dir=out_dir, pred_score_thr=score_thr, no_save_pred=True)
    prediction = result['predictions'][0]
    classes = inferencer.model.dataset_meta['classes']
    prediction = dict(image=image, label_names=[classes[i] for i in prediction['labels']],
                      **prediction)
    write_json(prediction, osp.join(out_dir, 'preds', osp.splitext(osp.basename(image))[0] +
                                    '.json'))


def infer_segmentation(inferencer, image, out_dir, picture):
    """``picture``: the image (RGB), already read."""
    import mmcv
    result = inferencer(image, return_vis=True, opacity=1.0)
    label_map = result['predictions']
    stem = osp.join(out_dir, '{}', osp.splitext(osp.basename(image))[0])
    mmcv.imwrite(np.concatenate([picture, result['visualization']], axis=1)[..., ::-1],
                 osp.join(out_dir, 'vis', osp.basename(image)))
    mmcv.imwrite(label_map.astype(np.uint8), stem.format('preds') + '.png')
    classes = inferencer.model.dataset_meta['classes']
    labels, counts = np.unique(label_map, return_counts=True)
    write_json(dict(image=image, height=int(label_map.shape[0]), width=int(label_map.shape[1]),
                    pixels_per_class={classes[i]: int(n) for i, n in zip(labels, counts)}),
               stem.format('preds') + '.json')


def main(argv=None):
    args = parse_args(argv)
    cfg = load_model_config(args.config, args.cfg_options)
    check_checkpoint_file(args.checkpoint)
    device = choose_device(args.device)
    images, problems = expand_inputs(args.inputs)
    inferencer = build_inferencer(cfg, args.checkpoint, device)

    import mmcv
    from mmengine.utils import track_iter_progress
    written = 0
    for image in track_iter_progress(images) if images else []:
        with open(image, 'rb') as f:
            picture = mmcv.imfrombytes(f.read())  # None when not decodable
        if picture is None:
            problems.append((image, 'not a readable image'))
            continue
        picture = picture[..., ::-1]  # RGB, as the inferencers draw
        if cfg.default_scope == 'mmdet':
            infer_detection(inferencer, image, args.out_dir, args.score_thr)
        else:
            infer_segmentation(inferencer, image, args.out_dir, picture)
        written += 1
    print(f'{written} image(s) -> {osp.join(args.out_dir, "vis")} (pictures), '
          f'{osp.join(args.out_dir, "preds")} (predictions)')
    if problems:
        lines = '\n'.join(f'  {item}: {reason}' for item, reason in problems)
        sys.exit(f'{len(problems)} input(s) skipped:\n{lines}')


if __name__ == '__main__':
    main()
