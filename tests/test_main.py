"""The entry point and configs: every config builds, flag errors name the key, modes dispatch."""

import glob
import json
import os
import subprocess
import sys

import pytest

from codellm_jax import checkpoint as ckpt_lib
from codellm_jax import config as config_lib
from codellm_jax import experiment, optim, trainer
from codellm_jax.data import pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MY_CONFIGS = [
    'configs/demo.py',
    'configs/demo.py:stage=sft',
    'configs/pretrain.py:size=tiny',
    'configs/pretrain.py:size=small,task=fim',
    'configs/pretrain.py:size=1b',
    'configs/pretrain.py:size=8b',
    'configs/pretrain.py:size=t5_small',
    'configs/pretrain.py:size=t5_base',
    'configs/sft.py:size=tiny',
    'configs/sft.py:size=t5_small',
    'configs/sft.py:size=pretrained',
]


@pytest.mark.parametrize('spec', MY_CONFIGS)
def test_every_training_config_builds(spec):
    cfg = config_lib.load_config(os.path.join(ROOT, spec))
    # Every section becomes its frozen dataclass (unknown keys / bad values would raise).
    config_lib.to_dataclass(pipeline.DataConfig, cfg.data)
    config_lib.to_dataclass(experiment.TrainConfig, cfg.train)
    config_lib.to_dataclass(experiment.EvalConfig, cfg.eval)
    config_lib.to_dataclass(optim.OptimizerConfig, cfg.optimizer)
    config_lib.to_dataclass(ckpt_lib.CheckpointConfig, cfg.checkpoint)
    if len(cfg.model):
        config_lib.model_config(cfg)
    assert cfg.mode in trainer.MODES


def test_demo_config_is_sized_for_cpu():
    from codellm_jax.models import decoder

    cfg = config_lib.load_config(os.path.join(ROOT, 'configs/demo.py'))
    m = config_lib.model_config(cfg)
    assert m.d_model == 256 and 4 <= m.num_layers <= 6 and cfg.train.seq_len == 256
    assert decoder.num_params(m) < 10_000_000


def _main(*args, timeout=300):
    return subprocess.run(
        [sys.executable, '-m', 'codellm_jax.main', *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=dict(os.environ, JAX_PLATFORMS='cpu'),
    )


def test_unknown_config_key_is_named(tmp_path):
    out = _main(
        '--config=configs/pretrain.py', f'--workdir={tmp_path}', '--config.train.bogus_key=1'
    )
    assert out.returncode != 0
    assert 'bogus_key' in out.stderr


def test_wrong_type_is_named(tmp_path):
    out = _main(
        '--config=configs/pretrain.py', f'--workdir={tmp_path}', '--config.train.batch_size=eight'
    )
    assert out.returncode != 0
    assert 'batch_size' in out.stderr


def test_unknown_config_arg_is_named(tmp_path):
    out = _main('--config=configs/pretrain.py:size=huge', f'--workdir={tmp_path}')
    assert out.returncode != 0
    assert "size='huge'" in out.stderr


@pytest.mark.slow
def test_main_trains_then_evaluates_and_records_the_run(tmp_path):
    common = [
        '--config=configs/pretrain.py:size=tiny',
        f'--workdir={tmp_path}',
        '--config.train.data_source=synthetic',
        '--config.train.num_steps=2',
        '--config.train.batch_size=8',
        '--config.train.seq_len=16',
        '--config.eval.every_steps=0',
        '--config.eval.num_batches=1',
        '--config.eval.batch_size=8',
        '--config.model.vocab_size=64',
    ]
    out = _main(*common)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(tmp_path / 'checkpoints') == ['2']
    info = json.loads((tmp_path / 'run_info.json').read_text())
    assert '--config.train.num_steps=2' in info['command_line']
    assert json.loads((tmp_path / 'config.json').read_text())['train']['num_steps'] == 2
    out = _main(*common, '--mode=eval')
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / 'eval_validation.json').read_text())
    assert result['step'] == 2 and result['perplexity'] > 1.0
    assert len(glob.glob(str(tmp_path / 'runs.jsonl'))) == 1


def test_eval_without_a_model_is_refused(tmp_path):
    cfg = config_lib.load_config(os.path.join(ROOT, 'configs/pretrain.py:size=tiny'))
    with pytest.raises(ValueError, match='Nothing to evaluate'):
        trainer.run(cfg, str(tmp_path), mode='eval')


def test_unknown_mode_is_refused(tmp_path):
    cfg = config_lib.load_config(os.path.join(ROOT, 'configs/pretrain.py:size=tiny'))
    with pytest.raises(ValueError, match="mode='serve'"):
        trainer.run(cfg, str(tmp_path), mode='serve')
