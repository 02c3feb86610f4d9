"""tools/plot_curves.py on mmengine work dirs (the real toy run's is drawn in test_detection.py)."""
import json

import pytest
from conftest import load_tool


def write_run(work_dir, session, rows):
    folder = work_dir / session / 'vis_data'
    folder.mkdir(parents=True)
    (folder / 'scalars.json').write_text(''.join(json.dumps(row) + '\n' for row in rows))


@pytest.fixture
def runs(tmp_path):
    a, b = tmp_path / 'run_a', tmp_path / 'run_b'
    # run a trained in two sessions (a resume), with per-epoch validation
    write_run(a, '20261201_100000', [dict(loss=2.0, lr=1e-4, base_lr=1e-4, step=1, iter=1),
                                     {'coco/bbox_mAP': 0.1, 'step': 1}])
    write_run(a, '20261201_120000', [dict(loss=1.0, lr=2e-4, base_lr=2e-4, step=2, iter=2),
                                     {'coco/bbox_mAP': 0.3, 'step': 2}])
    write_run(b, '20261202_090000', [dict(loss=3.0, lr=1e-4, step=1), dict(loss=2.5, lr=1e-4, step=2)])
    return a, b


def test_reads_every_session_in_order_and_draws_one_panel_per_key(tmp_path, runs, capsys):
    tool = load_tool('plot_curves')
    series = tool.read_scalars(str(runs[0]))
    assert series['loss'] == [(1, 2.0), (2, 1.0)] and series['coco/bbox_mAP'] == [(1, 0.1), (2, 0.3)]
    assert 'base_lr' not in series and 'step' not in series
    out = tmp_path / 'curves.png'
    tool.main([str(r) for r in runs] + ['--out', str(out)])
    assert '3 curves (loss, lr, coco/bbox_mAP) of 2 run(s)' in capsys.readouterr().out
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    tool.main([str(runs[0]), '--keys', 'bbox_mAP', '--out', str(out)])  # by the name's last part
    assert '1 curves (coco/bbox_mAP)' in capsys.readouterr().out


def test_unknown_key_and_missing_runs_fail_naming_them(tmp_path, runs):
    tool = load_tool('plot_curves')
    with pytest.raises(KeyError, match=r"no logged scalar named 'mIoU'; the runs logged: "
                       r"\['coco/bbox_mAP', 'loss', 'lr'\]"):
        tool.main([str(runs[0]), '--keys', 'mIoU', '--out', str(tmp_path / 'x.png')])
    with pytest.raises(FileNotFoundError, match=r"'.*nowhere': no \*/vis_data/scalars.json"):
        tool.main([str(tmp_path / 'nowhere')])
    assert not (tmp_path / 'x.png').exists()
