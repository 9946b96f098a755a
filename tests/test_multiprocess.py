"""Two JAX processes on localhost (`jax.distributed`, gloo collectives) train like one.

The same command runs as 1 process with 4 CPU devices and as 2 processes with 2 devices each
(mesh data 2 x fsdp 2 either way). Synthetic batches depend only on the global row, so both
runs see the same global batches; each process feeds its own rows. The per-step loss and
gradient norm must agree, and the 2-process run must checkpoint once and resume.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
FLAGS = [
    '--config=configs/pretrain.py:size=tiny',
    '--config.train.data_source=synthetic',
    '--config.train.log_every=1',
    '--config.eval.num_batches=1',
    '--config.eval.every_steps=0',
    '--config.mesh.shape=(2,2,1)',
    f'--config.checkpoint.every_steps={STEPS}',
]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def _launch(workdir, steps: int, processes: int) -> list[subprocess.CompletedProcess]:
    cmd = [sys.executable, '-m', 'codellm_jax.main', *FLAGS, f'--workdir={workdir}']
    cmd.append(f'--config.train.num_steps={steps}')
    if processes == 1:
        return [subprocess.run(cmd, cwd=ROOT, env=_env(4), capture_output=True, text=True)]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                *cmd,
                f'--coordinator_address=localhost:{port}',
                f'--num_processes={processes}',
                f'--process_id={i}',
            ],
            cwd=ROOT,
            env=_env(4 // processes),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _train_metrics(workdir) -> dict[int, dict]:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        lines = [json.loads(line) for line in f]
    return {m['step']: m for m in lines if m['prefix'] == 'train'}


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume(tmp_path):
    one, two = tmp_path / 'one', tmp_path / 'two'
    for runs in (_launch(one, STEPS, 1), _launch(two, STEPS, 2)):
        for r in runs:
            assert r.returncode == 0, r.stderr[-3000:]
    want, got = _train_metrics(one), _train_metrics(two)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    for step in want:
        for key in ('loss', 'grad_norm', 'accuracy'):
            np.testing.assert_allclose(got[step][key], want[step][key], rtol=1e-5, err_msg=key)
    assert all(m['grad_norm'] > 0 for m in want.values()) and want[STEPS]['learning_rate'] > 0
    for workdir, count in ((one, 1), (two, 2)):
        with open(workdir / 'run_info.json') as f:
            assert json.load(f)['process_count'] == count
    assert sorted(os.listdir(two / 'checkpoints')) == sorted(os.listdir(one / 'checkpoints'))

    # Both processes restore the step-3 checkpoint (state and data position) and go on.
    for r in _launch(two, STEPS + 2, 2):
        assert r.returncode == 0, r.stderr[-3000:]
        assert f'step {STEPS}' in r.stdout + r.stderr
    resumed = _train_metrics(two)
    assert sorted(resumed) == list(range(1, STEPS + 3))
