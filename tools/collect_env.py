"""Print the environment (versions, compiled mmcv ops, CUDA) and smoke-test mmcv's ops.

Exits non-zero, with the fix, when mmcv's compiled ops are missing or wrong.
"""
import importlib
import platform
import sys

FIX = ('mmcv was installed without compiled ops (or for another torch). Fix: run `make env` '
       'in this repo, or in your own environment: pip install -U openmim && '
       'mim install "mmcv>=2.0.0,<2.2.0" (prebuilt wheels exist for some torch/CUDA pairs), '
       'or build it: MMCV_WITH_OPS=1 pip install --no-build-isolation "mmcv==2.1.0" '
       '(see README, "Using it on your GPU cluster").')


def version_of(name):
    try:
        return importlib.import_module(name).__version__
    except Exception as e:  # report, do not fail: the ops check decides the exit code
        return f'not importable ({type(e).__name__}: {e})'


def smoke_test_ops(device):
    """RoIAlign and batched NMS on hand-computed cases; returns a list of failures."""
    import torch
    from mmcv.ops import batched_nms, roi_align

    # f(y, x) = x is linear, so bilinear sampling is exact: the bin centres of an
    # aligned 2x2 RoI over pixels 0..2 sit at x = 0.5 and 1.5.
    feat = torch.arange(4.).repeat(4, 1)[None, None].to(device)
    rois = torch.tensor([[0., 0.5, 0.5, 2.5, 2.5]], device=device)
    out = roi_align(feat, rois, (2, 2), 1.0, 1, 'avg', True).cpu()
    failures = []
    if not torch.allclose(out, torch.tensor([[[[0.5, 1.5], [0.5, 1.5]]]])):
        failures.append(f'roi_align on {device} gave {out.flatten().tolist()}, '
                        f'expected [0.5, 1.5, 0.5, 1.5]')
    # Boxes 0 and 1 overlap with IoU 81/119 = 0.68; box 2 is apart.
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]],
                         device=device)
    scores = torch.tensor([0.9, 0.8, 0.7], device=device)
    for idxs, expected in (([0, 0, 0], [0, 2]), ([0, 1, 0], [0, 1, 2])):
        _, keep = batched_nms(boxes, scores, torch.tensor(idxs, device=device),
                              dict(type='nms', iou_threshold=0.5))
        if sorted(keep.tolist()) != expected:
            failures.append(f'batched_nms on {device} with classes {idxs} kept '
                            f'{sorted(keep.tolist())}, expected {expected}')
    return failures


def main():
    import torch
    rows = [('Python', sys.version.split()[0]), ('Platform', platform.platform()),
            ('torch', torch.__version__), ('torchvision', version_of('torchvision')),
            ('mmengine', version_of('mmengine')), ('mmcv', version_of('mmcv')),
            ('mmdet', version_of('mmdet')), ('mmseg', version_of('mmseg')),
            ('timm', version_of('timm')), ('convnext_mm', version_of('convnext_mm')),
            ('CUDA available', torch.cuda.is_available())]
    if torch.cuda.is_available():
        rows += [('GPU', torch.cuda.get_device_name(0)), ('torch CUDA', torch.version.cuda)]
    failures = []
    try:
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
        rows += [('mmcv ops', 'compiled, loaded'),
                 ('mmcv ops compiler', get_compiler_version()),
                 ('mmcv ops CUDA', get_compiling_cuda_version())]
        devices = ['cpu']
        if torch.cuda.is_available() and get_compiling_cuda_version() != 'not available':
            devices.append('cuda')
        for device in devices:
            failures += smoke_test_ops(device)
        rows.append(('mmcv ops smoke test', 'FAILED' if failures else f'passed on {devices}'))
    except Exception as e:
        rows.append(('mmcv ops', f'MISSING ({type(e).__name__}: {e})'))
        failures.append(FIX)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f'{name:<{width}} : {value}')
    if failures:
        print('\n'.join(['', 'ERROR:'] + failures), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
