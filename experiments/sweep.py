"""Config-driven, reproducible ablation sweeps.

A sweep file (`experiments/sweeps/*.py`) defines `BASE_CONFIG` (a `--config=` spec) and
`get_sweep() -> list[dict]` of dotted-key overrides. This command expands it into one
`python -m codellm_jax.main` run per point, each with its own workdir named from its overrides,
validates every override against the base config before anything starts, and either prints the
commands (`--dry_run`, e.g. to hand to `launch/`) or runs them one after another. Finished runs are
skipped on a rerun (their workdir holds `DONE`), so an interrupted sweep resumes.

  python -m experiments.sweep --sweep=experiments/sweeps/demo_lr.py --root=workdirs/sweeps --dry_run
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags

from codellm_jax import config as config_lib

_SWEEP = flags.DEFINE_string('sweep', None, 'Path to a sweep file.', required=True)
_ROOT = flags.DEFINE_string('root', 'workdirs/sweeps', 'Parent directory of the run workdirs.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print the commands instead of running them.')
_PYTHON = flags.DEFINE_string('python', sys.executable, 'Interpreter that runs each point.')


def load_sweep(path: str) -> tuple[str, list[dict[str, Any]]]:
    """Returns (base config spec, list of override dicts) from a sweep file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Sweep file {path!r} does not exist.')
    spec = importlib.util.spec_from_file_location('_codellm_sweep', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ('BASE_CONFIG', 'get_sweep'):
        if not hasattr(module, name):
            raise ValueError(f'Sweep file {path!r} must define {name}.')
    points = list(module.get_sweep())
    if not points:
        raise ValueError(f'Sweep file {path!r}: get_sweep() returned no points.')
    return module.BASE_CONFIG, points


def run_name(overrides: Mapping[str, Any]) -> str:
    """A deterministic, filesystem-safe name: 'optimizer.learning_rate=0.001,train.seed=1'."""
    if not overrides:
        return 'base'
    text = ','.join(f'{k}={overrides[k]}' for k in sorted(overrides))
    return re.sub(r'[^A-Za-z0-9_.,=+-]', '_', text)


def validate(base_config: str, points: Sequence[Mapping[str, Any]]) -> None:
    """Applies every point's overrides to the base config: unknown keys or bad types raise."""
    cfg = config_lib.load_config(base_config)
    names = set()
    for point in points:
        config_lib.apply_overrides(cfg, point)
        name = run_name(point)
        if name in names:
            raise ValueError(f'Two sweep points share the run name {name!r}.')
        names.add(name)


def commands(
    base_config: str, points: Sequence[Mapping[str, Any]], root: str, python: str
) -> list[tuple[str, list[str]]]:
    """(workdir, argv) for each point."""
    out = []
    for point in points:
        workdir = os.path.join(root, run_name(point))
        argv = [python, '-m', 'codellm_jax.main', f'--config={base_config}', f'--workdir={workdir}']
        argv += [f'--config.{k}={_flag_value(v)}' for k, v in sorted(point.items())]
        out.append((workdir, argv))
    return out


def _flag_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return '(' + ','.join(str(v) for v in value) + (',)' if len(value) == 1 else ')')
    return str(value)


def main(argv: Sequence[str]) -> None:
    del argv
    base, points = load_sweep(_SWEEP.value)
    validate(base, points)
    for workdir, cmd in commands(base, points, _ROOT.value, _PYTHON.value):
        line = shlex.join(cmd)
        if _DRY_RUN.value:
            print(line)
            continue
        if os.path.exists(os.path.join(workdir, 'DONE')):
            print(f'skip (done): {workdir}')
            continue
        print(f'run: {line}', flush=True)
        subprocess.run(cmd, check=True)
        with open(os.path.join(workdir, 'DONE'), 'w') as f:
            f.write(line + '\n')


if __name__ == '__main__':
    app.run(main)
