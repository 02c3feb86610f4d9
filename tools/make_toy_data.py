"""Write small, deterministic COCO-format and ADE20K-format datasets for demos and tests.

    python tools/make_toy_data.py [--dataset coco] [--out data/toy_coco] [--num-train 96] [--num-val 24]
    python tools/make_toy_data.py --dataset ade20k [--out data/toy_ade20k]

COCO (instances): each image has a greyish textured background (smooth colour
noise plus stripes) and one to four non-overlapping objects of three classes
(circle, square, triangle; ``--num-classes 5`` adds pentagon and hexagon) of varied
size, rotation and shade (each class keeps to its own band of hues: red, blue, yellow,
green, purple), annotated with boxes and polygon masks (category ids 1, 2, ... or
``--category-ids``, as a dataset with non-contiguous ids has them):

    OUT/train/000000.png ...   OUT/annotations/instances_train.json
    OUT/val/000000.png ...     OUT/annotations/instances_val.json

ADE20K (semantic): a sky above a wavy horizon, grass below, and one to four
objects (ball, box, signboard: red circles, yellow-orange squares, magenta triangles)
drawn over both, in
ADE20K's layout and label space: a label PNG holds the ADE20K class index + 1
(sky 3, grass 10, box 42, signboard 44, ball 120) and 0 ("other", ignored with
``reduce_zero_label``) on a thin outline around each object:

    OUT/images/training/ADE_train_00000001.jpg       OUT/annotations/training/ADE_train_00000001.png
    OUT/images/validation/ADE_val_00000001.jpg       OUT/annotations/validation/ADE_val_00000001.png

The same arguments always give the same files. The real loading code is used
unchanged on them (``CocoDataset`` / ``ADE20KDataset`` with the class subset as
``metainfo``; see the configs under configs/demo/).
"""
import argparse
import colorsys
import json
import math
import os
import os.path as osp

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ('circle', 'square', 'triangle', 'pentagon', 'hexagon')
PALETTE = [(220, 20, 60), (0, 130, 200), (60, 180, 75), (255, 225, 25), (145, 30, 180)]
CORNERS = (None, 4, 3, 5, 6)  # the circle is drawn as a 32-gon
# The toy semantic classes, named as in ADE20K, and their 0-based ADE20K indices.
ADE20K_CLASSES = {'sky': 2, 'grass': 9, 'ball': 119, 'box': 41, 'signboard': 43}
SHAPE_TO_ADE20K = ('ball', 'box', 'signboard')  # circle, square, triangle
SHAPE_HUES = (0.0, 0.6, 0.15, 0.35, 0.8)  # red, blue, yellow, green, purple
SCENE_OBJECT_HUES = (0.0, 0.13, 0.83)  # ball red, box yellow-orange, signboard magenta


def textured_background(rng, height, width):
    base = rng.uniform(50, 200) + rng.uniform(-15, 15, size=3)  # greyish, a slight tint
    coarse = rng.normal(0, 25, size=(height // 32 + 2, width // 32 + 2, 3))
    noise = np.asarray(Image.fromarray(np.uint8(np.clip(coarse + 128, 0, 255))).resize(
        (width, height), Image.BILINEAR), dtype=np.float32) - 128
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
    ys, xs = np.mgrid[:height, :width]
    stripes = 12 * np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)
    fine = rng.normal(0, 6, size=(height, width, 3))
    return np.clip(base + noise + stripes[..., None] + fine, 0, 255).astype(np.uint8), base


def shape_polygon(rng, label, cx, cy, radius):
    if label == 0:
        angles = np.linspace(0, 2 * math.pi, 32, endpoint=False)
    else:
        corners = CORNERS[label]
        angles = rng.uniform(0, 2 * math.pi) + np.arange(corners) * 2 * math.pi / corners
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


def polygon_area(points):
    xs, ys = np.array(points).T
    return float(0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def class_colour(rng, hue):
    """A saturated colour near ``hue`` (0-1): each class keeps to its own band of hues, as
    real object classes have typical appearances; shape, size, shade and rotation vary."""
    rgb = colorsys.hsv_to_rgb((hue + rng.uniform(-0.04, 0.04)) % 1.0, rng.uniform(0.6, 1.0),
                              rng.uniform(0.55, 1.0))
    return tuple(int(255 * c) for c in rgb)


def make_image(rng, height, width, max_objects, num_classes=3):
    pixels, _ = textured_background(rng, height, width)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    placed, objects = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            radius = rng.uniform(0.08, 0.22) * min(height, width)
            cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
            if all(math.hypot(cx - x, cy - y) > radius + r + 4 for x, y, r in placed):
                break
        else:
            continue
        label = int(rng.integers(num_classes))
        polygon = shape_polygon(rng, label, cx, cy, radius)
        draw.polygon(polygon, fill=class_colour(rng, SHAPE_HUES[label]))
        placed.append((cx, cy, radius))
        objects.append((label, polygon))
    return image, objects


def write_split(out, split, num_images, seed, height, width, max_objects, category_ids):
    os.makedirs(osp.join(out, split), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, index, split == 'val'])
        image, objects = make_image(rng, height, width, max_objects, len(category_ids))
        file_name = f'{index:06d}.png'
        image.save(osp.join(out, split, file_name))
        images.append(dict(id=index + 1, file_name=file_name, height=height, width=width))
        for label, polygon in objects:
            xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
            x0, y0 = max(min(xs), 0), max(min(ys), 0)
            x1, y1 = min(max(xs), width), min(max(ys), height)
            annotations.append(
                dict(id=len(annotations) + 1, image_id=index + 1, category_id=category_ids[label],
                     bbox=[round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                     area=round(polygon_area(polygon), 2), iscrowd=0,
                     segmentation=[[round(v, 2) for p in polygon for v in p]]))
    coco = dict(
        info=dict(description='convnext_mm toy instances', version='1.0'),
        images=images, annotations=annotations,
        categories=[dict(id=i, name=name, supercategory='shape')
                    for i, name in zip(category_ids, CLASSES)])
    os.makedirs(osp.join(out, 'annotations'), exist_ok=True)
    path = osp.join(out, 'annotations', f'instances_{split}.json')
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(coco, f)
    os.replace(tmp, path)
    return len(images), len(annotations)


def make_scene(rng, height, width, max_objects):
    """A sky/grass scene with objects; returns the RGB image and its ADE20K label map."""
    ys, xs = np.mgrid[:height, :width]
    horizon = (rng.uniform(0.3, 0.6) * height
               + rng.uniform(3, 0.1 * height) * np.sin(xs * rng.uniform(0.01, 0.05) + rng.uniform(0, 6)))
    is_sky = ys < horizon
    sky_top, sky_bottom = rng.uniform([60, 110, 170], [140, 180, 255]), rng.uniform(170, 240, size=3)
    gradient = (ys / height)[..., None]
    sky = sky_top * (1 - gradient) + sky_bottom * gradient + rng.normal(0, 3, size=(height, width, 3))
    grass, _ = textured_background(rng, height, width)
    grass_tint = rng.uniform([40, 100, 20], [110, 170, 80])
    grass = 0.5 * grass + 0.5 * grass_tint
    pixels = np.where(is_sky[..., None], sky, grass)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    labels = Image.fromarray(np.where(is_sky, ADE20K_CLASSES['sky'] + 1,
                                      ADE20K_CLASSES['grass'] + 1).astype(np.uint8))
    draw, draw_labels = ImageDraw.Draw(image), ImageDraw.Draw(labels)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        radius = rng.uniform(0.08, 0.22) * min(height, width)
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        shape = int(rng.integers(len(SHAPE_TO_ADE20K)))
        polygon = shape_polygon(rng, shape, cx, cy, radius)
        draw.polygon(polygon, fill=class_colour(rng, SCENE_OBJECT_HUES[shape]))
        # Later objects may cover earlier ones, as in a real scene; the outline stays "other".
        draw_labels.polygon(polygon, fill=ADE20K_CLASSES[SHAPE_TO_ADE20K[shape]] + 1, outline=0,
                            width=2)
    return image, labels


def write_ade20k_split(out, split, num_images, seed, height, width, max_objects):
    folder = dict(train='training', val='validation')[split]
    for sub in ('images', 'annotations'):
        os.makedirs(osp.join(out, sub, folder), exist_ok=True)
    for index in range(num_images):
        rng = np.random.default_rng([seed, index, split == 'val', 1])
        image, labels = make_scene(rng, height, width, max_objects)
        name = f'ADE_{split}_{index + 1:08d}'
        image.save(osp.join(out, 'images', folder, f'{name}.jpg'), quality=95)
        labels.save(osp.join(out, 'annotations', folder, f'{name}.png'))
    return num_images


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Write a toy COCO- or ADE20K-format dataset.')
    parser.add_argument('--dataset', choices=['coco', 'ade20k'], default='coco')
    parser.add_argument('--out', help='output folder (default data/toy_coco or data/toy_ade20k)')
    parser.add_argument('--num-train', type=int, default=96)
    parser.add_argument('--num-val', type=int, default=24)
    parser.add_argument('--size', type=int, nargs=2, metavar=('H', 'W'),
                        help='image size (default 192 192 for coco, 192 256 for ade20k)')
    parser.add_argument('--max-objects', type=int, default=4)
    parser.add_argument('--num-classes', type=int, default=3, choices=range(2, len(CLASSES) + 1),
                        help=f'coco: how many of {CLASSES} (default 3)')
    parser.add_argument('--category-ids', type=int, nargs='+',
                        help='coco: the categories\' ids (default 1 ... --num-classes)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    for name in ('num_train', 'num_val', 'max_objects'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    args.category_ids = args.category_ids or list(range(1, args.num_classes + 1))
    if len(set(args.category_ids)) != args.num_classes or \
            len(args.category_ids) != args.num_classes:
        parser.error(f'--category-ids must be {args.num_classes} distinct ids, got '
                     f'{args.category_ids}')
    args.out = args.out or f'data/toy_{args.dataset}'
    args.size = args.size or ((192, 192) if args.dataset == 'coco' else (192, 256))
    if min(args.size) < 64:
        parser.error(f'--size must be at least 64x64, got {args.size}')
    return args


def main(argv=None):
    args = parse_args(argv)
    for split, count in (('train', args.num_train), ('val', args.num_val)):
        if args.dataset == 'coco':
            n_images, n_objects = write_split(args.out, split, count, args.seed, *args.size,
                                              args.max_objects, args.category_ids)
            print(f'{split}: {n_images} images, {n_objects} objects -> {args.out}/{split}')
        else:
            n_images = write_ade20k_split(args.out, split, count, args.seed, *args.size,
                                          args.max_objects)
            print(f'{split}: {n_images} images with label maps -> {args.out}')


if __name__ == '__main__':
    main()
