"""Break the code on purpose, one place at a time, and show which tests turn red.

Each entry of BREAKS changes one line that users depend on (the layer scale, the layer-decay
ids, a checkpoint key, the swap tool's outputs, ...) in a copy of the working tree, runs the
tests that should notice, and records the ones that failed. A break no test notices is a hole
in the suite: the tool exits 1 and names it. The table it prints is docs/testing.md's.

    python tools/check_breakage.py                 # every break (about 20 minutes on 2 cores)
    python tools/check_breakage.py --only grn_axis layer_decay_ids
    python tools/check_breakage.py --list

The working tree is never changed: each break is applied to a fresh copy of its tracked and
untracked (not ignored) files, which runs with this Python and ``PYTHONPATH`` pointing at it.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, NamedTuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Break(NamedTuple):
    name: str
    what: str  # what a user would suffer
    path: str
    old: str  # must occur exactly once in the file
    new: str
    tests: List[str]  # pytest arguments: files, node ids, -k expressions


BREAKS = [
    Break('layer_scale_dropped', 'the layer scale is not applied (plain block: GPU, AMP, export)',
          'convnext_mm/models/backbones/convnext.py',
          '            x = self.gamma * x\n', '            x = x\n',
          ['tests/test_backbone.py', '-k', 'autocast or switch or export or compile']),
    Break('layer_scale_dropped_on_cpu', 'the CPU accelerator forgets the layer scale',
          'convnext_mm/ops/__init__.py',
          '(y if gamma is None else gamma * y)', 'y',
          ['tests/test_backbone.py', '-k', 'timm']),
    Break('grn_axis', "GRN's L2 norm over H and C instead of H and W",
          'convnext_mm/models/backbones/layers.py',
          'torch.norm(x, p=2, dim=(1, 2), keepdim=True)',
          'torch.norm(x, p=2, dim=(1, 3), keepdim=True)',
          ['tests/test_backbone.py', '-k', 'timm']),
    Break('drop_path_not_rescaled', 'stochastic depth without the 1 / keep_prob rescaling',
          'convnext_mm/models/backbones/layers.py',
          'return x * mask.div_(keep_prob)', 'return x * mask',
          ['tests/test_backbone.py', '-k', 'training_step_matches_timm']),
    Break('layer_decay_ids', "layer-wise decay: stage 2's block groups one layer id too deep",
          'convnext_mm/engine/optimizers/layer_decay.py',
          'return (1, 2, 3 + int(parts[3]) // 3, num_layers)[stage]',
          'return (1, 2, 4 + int(parts[3]) // 3, num_layers)[stage]',
          ['tests/test_layer_decay.py']),
    Break('recipe_decay_rate', "UperNet-T's layer decay 0.9 -> 0.8 (the paper's recipe)",
          'configs/upernet_convnext_t_ade20k.py',
          'decay_rate=0.9', 'decay_rate=0.8',
          ['tests/test_segmentation.py', '-k', 'recipe_values']),
    Break('fcmae_kernel_transpose', "FCMAE sparse kernels converted without the (h, w) swap",
          'convnext_mm/checkpoint/formats.py',
          '            value = value.transpose(3, 2)\n', '',
          ['tests/test_checkpoint.py']),
    Break('mmpretrain_keys_swapped', "mmpretrain's pointwise_conv1 and 2 loaded the wrong way",
          'convnext_mm/checkpoint/formats.py',
          r"(r'^(stages\.\d+\.\d+\.)pointwise_conv1\.', r'\1pwconv1.'),",
          r"(r'^(stages\.\d+\.\d+\.)pointwise_conv1\.', r'\1pwconv2.'),",
          ['tests/test_checkpoint.py', '-k', 'mmpretrain']),
    Break('unrestricted_unpickling', 'checkpoints unpickled without the allow-list',
          'convnext_mm/checkpoint/io.py',
          'map_location=map_location, weights_only=True)',
          'map_location=map_location, weights_only=False)',
          ['tests/test_reliability.py', '-k', 'pickle']),
    Break('download_length_unchecked', 'a download cut short is cached as the checkpoint',
          'convnext_mm/checkpoint/io.py',
          'if expected is not None and got != int(expected):', 'if False:',
          ['tests/test_checkpoint.py', '-k', 'url']),
    Break('swap_out_indices', 'the swap tool gives the neck stages 0-2 instead of 1-3',
          'convnext_mm/backbone_swap.py',
          'out_indices = tuple(range(4 - _outputs_read(model), 4))',
          'out_indices = tuple(range(3 - _outputs_read(model), 3))',
          ['tests/test_backbone_swap.py', '-k', 'not trains_in']),
    Break('mask_head_num_classes', "tools/dataset_config.py leaves the mask heads' num_classes",
          'convnext_mm/dataset_config.py',
          "CLASS_AGNOSTIC_KEYS = ('rpn_head', )", "CLASS_AGNOSTIC_KEYS = ('rpn_head', 'mask_head')",
          ['tests/test_dataset_config.py']),
    Break('reduce_zero_label_ignored', 'the data check reads label maps without reduce_zero_label',
          'convnext_mm/utils/data_contents.py',
          'value = 255 if value in (0, 255) else value - 1', 'value = value',
          ['tests/test_dataset_config.py']),
    Break('rng_state_not_restored', 'resume does not restore the random state (not bit-identical)',
          'convnext_mm/engine/hooks/checkpoint_hook.py',
          "self._resumed_rng_state = states[runner.rank if runner.rank < len(states) else 0]",
          'pass',
          ['tests/test_reliability.py', '-k', 'random_moment']),
    Break('restart_starts_over', 'a restarted or requeued job trains again from the start',
          'convnext_mm/utils/runtime.py',
          "        if latest is not None:\n            resume = 'auto'\n",
          "        if latest is not None:\n            pass\n",
          ['tests/test_distributed.py', '-k', 'requeued']),
    Break('rank_rng_states_shared', "every rank resumes with rank 0's random state",
          'convnext_mm/engine/hooks/checkpoint_hook.py',
          'states[runner.rank if runner.rank < len(states) else 0]', 'states[0]',
          ['tests/test_distributed.py', '-k', 'killed_fsdp']),
    Break('fsdp_cpu_offload', "FSDP's whole optimizer state gathered through torch's CPU offload",
          'convnext_mm/engine/fsdp_strategy.py',
          '                    config.offload_to_cpu = False', '                    pass',
          ['tests/test_distributed.py', '-k', 'killed_fsdp']),
    Break('fsdp_wrapped_names', 'the layer-decay groups name parameters by their FSDP wrappers',
          'convnext_mm/engine/optimizers/layer_decay.py',
          "name = unwrapped_name(f'{module_name}.{param_name}' if module_name",
          "name = (f'{module_name}.{param_name}' if module_name",
          ['tests/test_distributed.py', '-k', 'killed_fsdp']),
    Break('nan_loss_ignored', 'a NaN loss trains on instead of stopping',
          'convnext_mm/engine/hooks/finite_loss_hook.py',
          'if math.isfinite(loss):', 'if True:',
          ['tests/test_reliability.py', '-k', 'nan']),
]


def copy_tree(dest: str) -> None:
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                           cwd=ROOT, check=True, capture_output=True).stdout.split(b'\0')
    for name in filter(None, (f.decode() for f in files)):
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name), follow_symlinks=False)


def broken(root: str, brk: Break) -> str:
    """The text of ``brk.path`` under ``root`` with the break applied."""
    with open(os.path.join(root, brk.path)) as f:
        text = f.read()
    if text.count(brk.old) != 1:
        raise SystemExit(f'{brk.name}: {brk.old!r} occurs {text.count(brk.old)} times in '
                         f'{brk.path}, not once: update BREAKS to the code')
    return text.replace(brk.old, brk.new)


def run(brk: Break, workers: int):
    """(failed test ids, seconds, pytest's last line)."""
    with tempfile.TemporaryDirectory(prefix=f'break_{brk.name}_') as root:
        copy_tree(root)
        text = broken(root, brk)
        with open(os.path.join(root, brk.path), 'w') as f:
            f.write(text)
        env = dict(os.environ, PYTHONPATH=root, PYTHON=sys.executable)
        where = subprocess.run(
            [sys.executable, '-c', 'import convnext_mm; print(convnext_mm.__file__)'],
            cwd='/', env=env, capture_output=True, text=True).stdout
        if not where.startswith(root):
            raise SystemExit(f'the copy in {root} imports convnext_mm from {where!r}')
        start = time.perf_counter()
        out = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-rf', '-p', 'no:cacheprovider',
                              '-n', str(workers), '--dist', 'loadgroup', '-m', 'not slow']
                             + brk.tests, cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    log = out.stdout + out.stderr
    failed = sorted(set(re.findall(r'^(?:FAILED|ERROR) (\S+)', log, re.M)))
    return failed, seconds, (log.strip().splitlines() or [''])[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--only', nargs='+', metavar='NAME', help='these breaks only')
    parser.add_argument('--list', action='store_true', help='list the breaks and exit')
    parser.add_argument('--workers', type=int, default=2, help='pytest -n (default 2)')
    args = parser.parse_args(argv)
    names = [b.name for b in BREAKS]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(f'unknown break(s) {unknown}; choose from {names}')
    breaks = [b for b in BREAKS if not args.only or b.name in args.only]
    if args.list:
        for b in breaks:
            print(f'{b.name}: {b.what} ({b.path}; tests: {" ".join(b.tests)})')
        return
    # check every break applies before spending time on the first
    for b in breaks:
        broken(ROOT, b)
    print('| break | what a user would suffer | tests that turned red | s |')
    print('| --- | --- | --- | --- |')
    missed = []
    for b in breaks:
        failed, seconds, last = run(b, args.workers)
        if not failed:
            missed.append(b.name)
        shown = ', '.join(f'`{f.split("::", 1)[-1].split("@")[0]}`' for f in failed[:4])
        more = f' and {len(failed) - 4} more' if len(failed) > 4 else ''
        print(f'| {b.name} | {b.what} | {shown + more or "NONE: " + last} | {seconds:.0f} |',
              flush=True)
    if missed:
        sys.exit(f'not caught by any test: {", ".join(missed)}')
    print(f'all {len(breaks)} breaks caught')


if __name__ == '__main__':
    main()
