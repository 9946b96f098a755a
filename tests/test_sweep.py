"""Sweeps: every sweep file expands into valid runs of its base config."""

import glob
import os

import pytest

from codellm_jax import config as config_lib
from experiments import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWEEPS = sorted(glob.glob(os.path.join(ROOT, 'experiments', 'sweeps', '*.py')))


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_there_are_sweeps():
    assert SWEEPS


@pytest.mark.parametrize('path', SWEEPS, ids=os.path.basename)
def test_sweep_points_apply_to_base_config(path):
    base, points = sweep.load_sweep(path)
    sweep.validate(base, points)
    cfg = config_lib.load_config(base)
    for point in points:
        out = config_lib.apply_overrides(cfg, point)
        for key, value in point.items():
            node = out
            for part in key.split('.'):
                node = node[part]
            assert node == value
        config_lib.model_config(out)


def test_commands_are_deterministic_and_distinct():
    base, points = sweep.load_sweep(os.path.join(ROOT, 'experiments/sweeps/demo_lr.py'))
    cmds = sweep.commands(base, points, 'runs', 'python')
    assert cmds == sweep.commands(base, points, 'runs', 'python')
    workdirs = [w for w, _ in cmds]
    assert len(set(workdirs)) == len(points) == 18
    workdir, argv = cmds[0]
    assert argv[:3] == ['python', '-m', 'codellm_jax.main']
    assert f'--workdir={workdir}' in argv
    assert '--config.optimizer.learning_rate=0.0003' in argv


def test_bad_override_is_named(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text(
        "BASE_CONFIG = 'configs/llama3.py:size=tiny'\n"
        "def get_sweep():\n    return [{'optimizer.lr': 1.0}]\n"
    )
    base, points = sweep.load_sweep(str(bad))
    with pytest.raises(KeyError, match="'optimizer.lr'"):
        sweep.validate(base, points)


def test_duplicate_run_names_rejected(tmp_path):
    dup = tmp_path / 'dup.py'
    dup.write_text(
        "BASE_CONFIG = 'configs/llama3.py:size=tiny'\n"
        "def get_sweep():\n    return [{'train.seed': 1}, {'train.seed': 1}]\n"
    )
    base, points = sweep.load_sweep(str(dup))
    with pytest.raises(ValueError, match='share the run name'):
        sweep.validate(base, points)
