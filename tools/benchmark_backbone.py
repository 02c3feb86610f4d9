"""Speed of the ConvNeXt backbone against timm, torchvision and the official formulation.

    python tools/benchmark_backbone.py [--arch tiny] [--shapes 8x3x224x224 2x3x800x1216]
        [--device cpu|cuda] [--precision fp32 fp16 bf16] [--channels-last off on]
        [--compile off on] [--repeats 10] [--warmup 3] [--peak-size N] [--ablate] [--memory]
        [--json OUT] [--profile N]

Every implementation gets the same weights (ours, converted) and the same input. For each
setting, forward (inference, no_grad) and forward+backward (training: sum of the four stage
outputs, backward) are timed in interleaved rounds after warm-up (the order rotating each
round), so that drift of the machine affects every implementation alike; the table gives the
median images/s, the spread (max-min over median) and ours / reference: the median over
rounds of the two times measured in the same round. Implementations:

- ours:        convnext_mm.ConvNeXt (stage outputs through norm0..3)
- timm:        timm's ConvNeXt, stem + stages (features_only equivalent), + the same norms
- torchvision: torchvision's ConvNeXt .features, stage outputs, + the same norms
- official:    the official detection code's formulation on our weights: its Block.forward
               and its channels-first LayerNorm (mean/variance by hand on NCHW), the baseline
               users migrate from

Achieved GFLOP/s (2 x multiply-adds counted by mmengine / wall time) is printed next to the
measured peak of a large matrix product on the same device in the row's precision (fp16/bf16
rows against a half-precision product, a multiple of the fp32 peak on GPUs with tensor
cores and twice it on the AVX-512 bf16 CPU of docs/benchmarks.md; on the CPU the faster of mm
and oneDNN's linear kernel), as a percentage. --memory adds the memory of one
training step with and without with_cp: on CUDA the peak allocated above the model; on the
CPU, whose allocator keeps no statistics, the bytes of the tensors autograd saves for the
backward pass, weights excluded (the activations that dominate a training step's peak and
that with_cp trades for recomputation), counted once per storage through saved-tensor hooks.
--profile N prints, after each row, the N operators of one profiled step of each
implementation that took the most time (on CUDA, time on the GPU), with their call counts:
where the time goes when two implementations differ.
"""
import argparse
import copy
import json
import os.path as osp
import statistics
import sys
import time
from typing import Dict

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from convnext_mm import ConvNeXt, ops  # noqa: E402
from convnext_mm.checkpoint.formats import convnext_mm_key  # noqa: E402
from convnext_mm.models.backbones import ConvNeXtBlock, LayerNorm2d  # noqa: E402

TIMM_NAMES = {'atto': 'convnext_atto', 'femto': 'convnext_femto', 'pico': 'convnext_pico',
              'nano': 'convnext_nano', 'tiny': 'convnext_tiny', 'small': 'convnext_small',
              'base': 'convnext_base', 'large': 'convnext_large', 'xlarge': 'convnext_xlarge'}
TORCHVISION_NAMES = {'tiny': 'convnext_tiny', 'small': 'convnext_small', 'base': 'convnext_base',
                     'large': 'convnext_large'}


class ChannelsFirstLayerNorm(nn.Module):
    """The official detection code's LayerNorm for NCHW tensors (the migration baseline)."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class OfficialBlock(nn.Module):
    """The official detection code's Block.forward, on one of our blocks' parameters."""

    def __init__(self, block: ConvNeXtBlock):
        super().__init__()
        if block.grn is not None or not isinstance(block.drop_path, nn.Identity):
            raise ValueError('the official detection block has no GRN and runs here without '
                             'stochastic depth')
        self.dwconv, self.norm, self.act = block.dwconv, block.norm, nn.GELU()
        self.pwconv1, self.pwconv2, self.gamma = block.pwconv1, block.pwconv2, block.gamma

    def forward(self, x):
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + x.permute(0, 3, 1, 2)


class StageOutputs(nn.Module):
    """A reference network's stem and stages, each stage output through ours' norm{i}."""

    def __init__(self, stem, stages, norms):
        super().__init__()
        self.stem, self.stages, self.norms = stem, nn.ModuleList(stages), nn.ModuleList(norms)

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for stage, norm in zip(self.stages, self.norms):
            x = stage(x)
            outs.append(norm(x))
        return tuple(outs)


def copy_ours_into(reference: nn.Module, ours_state: dict, layout: str) -> None:
    """Give a timm/torchvision model our weights, renaming by the checkpoint tables."""
    state = reference.state_dict()
    for key, value in state.items():
        ours_key = convnext_mm_key(key, layout)
        if ours_key in ours_state:
            value.copy_(ours_state[ours_key].reshape(value.shape))
    reference.load_state_dict(state)


class WithAccelerators(nn.Module):
    """Ours with the CPU accelerators of ``enabled`` (names in ``convnext_mm.ops.ENABLED``)
    on and the others off; the choice is made in the forward pass, which records the backward."""

    def __init__(self, model: nn.Module, enabled):
        super().__init__()
        self.model, self.enabled = model, {name: name in enabled for name in ops.ENABLED}

    def forward(self, x):
        saved = dict(ops.ENABLED)
        ops.ENABLED.update(self.enabled)
        try:
            return self.model(x)
        finally:
            ops.ENABLED.update(saved)


def build_implementations(arch: str, with_cp: bool = False, ablate: bool = False) -> dict:
    torch.manual_seed(0)
    ours = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3), with_cp=with_cp)
    with torch.no_grad():  # non-trivial layer scale and norms, so that every path does work
        for name, p in ours.named_parameters():
            if name.endswith('gamma') or 'norm' in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith(('weight', 'gamma'))
                        else 0.1 * torch.randn_like(p))
    impls = {'ours': ours}
    norms = [getattr(ours, f'norm{i}') for i in range(4)]
    state = ours.state_dict()
    try:
        import timm
        if arch in TIMM_NAMES:
            model = timm.create_model(TIMM_NAMES[arch], pretrained=False)
            copy_ours_into(model, state, 'timm')
            impls['timm'] = StageOutputs(model.stem, model.stages, copy.deepcopy(norms))
    except ImportError:
        print('timm not installed: skipped')
    try:
        import torchvision
        if arch in TORCHVISION_NAMES:
            # no stochastic depth, as in the other implementations (it changes the work done)
            model = getattr(torchvision.models, TORCHVISION_NAMES[arch])(stochastic_depth_prob=0.)
            copy_ours_into(model, state, 'torchvision')
            features = model.features
            impls['torchvision'] = StageOutputs(
                features[0], [features[1], nn.Sequential(features[2], features[3]),
                              nn.Sequential(features[4], features[5]),
                              nn.Sequential(features[6], features[7])], copy.deepcopy(norms))
    except ImportError:
        print('torchvision not installed: skipped')
    official = copy.deepcopy(ours)
    for parent in list(official.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerNorm2d):
                setattr(parent, name, ChannelsFirstLayerNorm(child))
            elif isinstance(child, ConvNeXtBlock):
                setattr(parent, name, OfficialBlock(child))
    impls['official'] = official
    if ablate:  # ours with each CPU accelerator off, and with all of them off
        for name in ops.ENABLED:
            impls[f'ours without {name}'] = WithAccelerators(ours, set(ops.ENABLED) - {name})
        impls['ours plain'] = WithAccelerators(ours, set())
    return impls


def check_same_outputs(impls: dict, x: torch.Tensor) -> float:
    """Max abs difference of every implementation's stage outputs from ours (fp32)."""
    with torch.no_grad():
        ref = impls['ours'].eval()(x)
        worst = 0.
        for model in impls.values():
            model.eval()
            for a, b in zip(ref, model(x)):
                worst = max(worst, (a - b).abs().max().item())
    return worst


def synchronize(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def make_step(model, x, train: bool, precision: str, device):
    dtype = None if precision == 'fp32' else DTYPES[precision]

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if train:
                outs = model(x)
                loss = sum(o.float().mean() for o in outs)
            else:
                with torch.no_grad():
                    model(x)
        if train:
            loss.backward()
            for p in model.parameters():
                p.grad = None
    return step


def time_interleaved(steps: dict, repeats: int, warmup: int, device) -> dict:
    """Seconds per step of each implementation, ``repeats`` rounds after ``warmup`` rounds.

    Every round runs each implementation once; the order rotates from round to round, so
    that no implementation always runs right after the same neighbour.
    """
    names = list(steps)
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            steps[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def paired_speed_ratio(ours: list, reference: list) -> float:
    """Median over rounds of reference time / our time in the same round (> 1: ours faster).

    Pairing the two measurements of a round cancels the machine's drift between rounds,
    which on a shared CPU is larger than the differences being measured."""
    return statistics.median(r / o for r, o in zip(reference, ours))


def profile_table(step, device, rows: int) -> str:
    """The ``rows`` operators of one (warm) step with the most self time on ``device``."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == 'cuda':
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    step()
    with torch.profiler.profile(activities=activities) as prof:
        step()
        synchronize(device)
    sort_by = 'self_device_time_total' if device.type == 'cuda' else 'self_cpu_time_total'
    return prof.key_averages().table(sort_by=sort_by, row_limit=rows)


def matmul_peak_gflops(device, dtype=torch.float32, n=None) -> Dict[str, float]:
    """GFLOP/s of a large matrix product on the device by kernel: ``mm`` and, on a CPU with
    oneDNN for the dtype, also oneDNN's linear kernel (in docs/benchmarks.md 1.25-1.4x MKL's
    ``mm`` on the Zen 4, 2.2-2.8x on the Zen 5; oneDNN has no bf16/fp16 kernel for CPUs without
    those instructions). The peak is the fastest."""
    n = n or (8192 if device.type == 'cuda' else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    products = {'mm': lambda: a @ b}
    if device.type == 'cpu' and torch.backends.mkldnn.is_available() and (
            dtype == torch.float32
            or dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()
            or dtype == torch.float16 and torch.ops.mkldnn._is_mkldnn_fp16_supported()):
        products['oneDNN linear'] = \
            lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, 'none', [], '')
    gflops = {}
    for kernel, product in products.items():
        for _ in range(2):
            product()
        best = float('inf')
        for _ in range(5):
            synchronize(device)
            start = time.perf_counter()
            product()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        gflops[kernel] = 2 * n ** 3 / best / 1e9
    return gflops


def backbone_macs(model, shape) -> float:
    from mmengine.analysis import FlopAnalyzer
    x = torch.zeros(1, *shape[1:])
    analyzer = FlopAnalyzer(copy.deepcopy(model).cpu().float().eval(), (x, ))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return analyzer.total() * shape[0]


def training_memory_mib(arch, shape, with_cp, device) -> float:
    """Memory of one training step of the backbone (see the module docstring)."""
    model = ConvNeXt(arch=arch, with_cp=with_cp).to(device).train()
    x = torch.randn(shape, device=device, requires_grad=True)
    if device.type == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        sum(o.float().mean() for o in model(x)).backward()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    storages = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outs = model(x)
    sum(o.mean() for o in outs).backward()
    return sum(storages.values()) / 2 ** 20


def parse_shape(text):
    try:
        shape = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        shape = ()
    if len(shape) != 4 or shape[1] != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f'shape must be NxCxHxW with C=3, got {text!r}')
    return shape


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='tiny', choices=sorted(ConvNeXt.arch_settings))
    parser.add_argument('--shapes', nargs='+', type=parse_shape,
                        default=[(8, 3, 224, 224), (2, 3, 800, 1216)])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--precision', nargs='+', default=['fp32'],
                        choices=['fp32', 'fp16', 'bf16'])
    parser.add_argument('--channels-last', nargs='+', default=['off', 'on'], choices=['off', 'on'])
    parser.add_argument('--compile', nargs='+', default=['off'], choices=['off', 'on'])
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'],
                        choices=['infer', 'train'])
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--peak-size', type=int, default=None,
                        help='side of the square matrix product timed for the peak '
                        '(default 2048 on a CPU, 8192 on a GPU)')
    parser.add_argument('--ablate', action='store_true',
                        help='also time ours with each CPU accelerator (convnext_mm.ops) off, '
                        'and with all of them off')
    parser.add_argument('--memory', action='store_true', help='also peak memory with/without with_cp')
    parser.add_argument('--json', help='also write the results to this JSON file')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='print the N costliest operators of one step of each '
                        'implementation after each row')
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f'--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error(f'--device {args.device}: CUDA is not available here')
    if args.device == 'cpu' and 'fp16' in args.precision:
        parser.error('--precision fp16 needs a CUDA device (CPU autocast supports bf16)')
    if args.profile < 0:
        parser.error(f'--profile must be >= 0 operators, got {args.profile}')
    if args.peak_size is not None and args.peak_size < 1:
        parser.error(f'--peak-size must be a positive integer, got {args.peak_size}')
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (
        f'CPU, {torch.get_num_threads()} threads, ATen {torch.backends.cpu.get_cpu_capability()}'
        f' code, CPU accelerators {"on" if ops.FAST_CPU else "off"}')
    print(f'# ConvNeXt-{args.arch} backbone, {name}, torch {torch.__version__}, '
          f'{time.strftime("%Y-%m-%d")}')
    impls = {k: m.to(device)
             for k, m in build_implementations(args.arch, ablate=args.ablate).items()}
    difference = check_same_outputs(impls, torch.randn(1, 3, 64, 64, device=device))
    print(f'implementations: {", ".join(impls)}; max abs difference of stage outputs from ours '
          f'(fp32, 1x3x64x64, on {device.type}): {difference:.2e}')
    peaks, peaks_by_kernel = {}, {}
    for precision in args.precision:
        by_kernel = matmul_peak_gflops(device, DTYPES[precision], args.peak_size)
        peaks[precision], peaks_by_kernel[precision] = max(by_kernel.values()), by_kernel
        each = ', '.join(f'{kernel} {value:.0f}' for kernel, value in by_kernel.items())
        print(f'peak of a {args.peak_size or "large"} {precision} matrix product on this '
              f'device (best of {" and ".join(by_kernel)}): {peaks[precision]:.0f} GFLOP/s '
              f'({each})')
    results = []
    header = f'| shape | mode | precision | channels_last | compile | {" | ".join(impls)} | ' \
        f'ours GFLOP/s (% of peak) | {" | ".join("ours/" + n for n in impls if n != "ours")} |'
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for shape in args.shapes:
        macs = backbone_macs(impls['ours'], shape)
        x_cpu = torch.randn(shape)
        for mode in args.modes:
            for precision in args.precision:
                for channels_last in args.channels_last:
                    for compiled in args.compile:
                        fmt = torch.channels_last if channels_last == 'on' else \
                            torch.contiguous_format
                        x = x_cpu.to(device).to(memory_format=fmt)
                        if compiled == 'on':
                            # Fresh caches per setting: compiled models of earlier settings
                            # would count towards dynamo's recompile limit, past which it
                            # falls back to eager without an error.
                            torch.compiler.reset()
                        steps = {}
                        for impl, model in impls.items():
                            model = model.to(memory_format=fmt)
                            model.train(mode == 'train')
                            if compiled == 'on':
                                # Static sizes: with dynamic ones (after a second shape)
                                # torch 2.14's inductor fails on ConvNeXt training graphs.
                                model = torch.compile(model, dynamic=False)
                            steps[impl] = make_step(model, x, mode == 'train', precision, device)
                        times = time_interleaved(steps, args.repeats, args.warmup, device)
                        medians = {k: statistics.median(v) for k, v in times.items()}
                        spread = {k: (max(v) - min(v)) / medians[k] for k, v in times.items()}
                        ips = {k: shape[0] / m for k, m in medians.items()}
                        flops = 2 * macs * (3 if mode == 'train' else 1)  # backward ~ 2x forward
                        achieved = flops / medians['ours'] / 1e9
                        ratios = {k: paired_speed_ratio(times['ours'], times[k])
                                  for k in times if k != 'ours'}
                        row = dict(shape='x'.join(map(str, shape)), mode=mode,
                                   precision=precision, channels_last=channels_last,
                                   compile=compiled, images_per_s=ips, spread=spread,
                                   ours_gflops=achieved,
                                   ours_percent_of_peak=100 * achieved / peaks[precision],
                                   ratios=ratios)
                        results.append(row)
                        cells = ' | '.join(f'{ips[k]:.2f} (±{100 * spread[k] / 2:.0f}%)'
                                           for k in impls)
                        print(f'| {row["shape"]} | {mode} | {precision} | {channels_last} | '
                              f'{compiled} | {cells} | {achieved:.0f} '
                              f'({row["ours_percent_of_peak"]:.0f}%) | '
                              f'{" | ".join(f"{r:.2f}x" for r in ratios.values())} |',
                              flush=True)
                        for impl in impls if args.profile else ():
                            print(f'\n{impl}, {row["shape"]} {mode} {precision} channels_last '
                                  f'{channels_last} compile {compiled}:\n'
                                  f'{profile_table(steps[impl], device, args.profile)}')
    memory = []
    if args.memory:
        what = 'peak allocated in a training step' if device.type == 'cuda' else \
            'tensors saved for backward'
        print(f'\n| shape | {what}, MiB: with_cp=False | with_cp=True | saved |')
        print('|---|---|---|---|')
        for shape in args.shapes:
            plain = training_memory_mib(args.arch, shape, False, device)
            with_cp = training_memory_mib(args.arch, shape, True, device)
            memory.append(dict(shape='x'.join(map(str, shape)), plain_mib=plain,
                               with_cp_mib=with_cp, saved=1 - with_cp / plain))
            print(f'| {memory[-1]["shape"]} | {plain:.0f} | {with_cp:.0f} | '
                  f'{100 * memory[-1]["saved"]:.0f}% |')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(device=name, arch=args.arch, torch=torch.__version__,
                           peak_gflops=peaks, peak_gflops_by_kernel=peaks_by_kernel,
                           results=results, memory=memory), f, indent=1)


if __name__ == '__main__':
    main()
