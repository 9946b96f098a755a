"""The loop: 2-step end-to-end runs, bitwise resume after SIGKILL, NaN handling, bad input."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tiny_models

from codellm_jax import config as config_lib
from codellm_jax import metrics, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(kind='decoder', num_steps=2):
    cfg = config_lib.base_config()
    cfg.model_kind = kind
    if kind == 'decoder':
        cfg.model = dict(tiny_models.SMALL_DECODER, max_seq_len=32)
        cfg.data.task = 'lm'
    else:
        cfg.model = dict(tiny_models.SMALL_ENCODER_DECODER)
        cfg.data.task = 'span_corruption'
        cfg.data.decoder_seq_len = 8
    cfg.train.data_source = 'synthetic'
    cfg.train.seq_len = 16
    cfg.train.batch_size = 8
    cfg.train.num_steps = num_steps
    cfg.train.log_every = 1
    cfg.optimizer.learning_rate = 1e-2
    cfg.optimizer.warmup_steps = 1
    cfg.optimizer.total_steps = 20
    cfg.eval.every_steps = num_steps
    cfg.eval.num_batches = 2
    cfg.eval.batch_size = 8
    cfg.checkpoint.every_steps = 2
    return cfg


@pytest.mark.parametrize('kind', ['decoder', 'encoder_decoder'])
def test_two_step_end_to_end(tmp_path, kind):
    cfg = tiny_config(kind)
    if kind == 'decoder':
        cfg.train.profile_start_step = 1
        cfg.train.profile_num_steps = 1
        cfg.train.num_microbatches = 2
        cfg.train.batch_size = 16
    out = trainer.train_and_evaluate(cfg, str(tmp_path))
    assert out['step'] == 2 and out['source'] == 'from scratch'
    for key in (
        'loss',
        'perplexity',
        'accuracy',
        'grad_norm',
        'learning_rate',
        'tokens_per_s',
        'step_time',
    ):
        assert np.isfinite(out['train'][key]), key
    assert np.isfinite(out['eval']['loss']) and out['eval']['perplexity'] > 1.0
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
    for name in ('config.json', 'run_info.json', 'metrics.jsonl'):
        assert (tmp_path / name).exists(), name
    info = json.loads((tmp_path / 'run_info.json').read_text())
    assert info['git_commit'] and info['packages']['jax'] == jax.__version__
    assert json.loads((tmp_path / 'config.json').read_text())['model_kind'] == kind
    lines = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [x['step'] for x in lines if x['prefix'] == 'train'] == [1, 2]
    assert glob.glob(str(tmp_path / 'tensorboard' / 'events.out.tfevents.*'))
    if kind == 'decoder':
        assert glob.glob(str(tmp_path / 'profile' / '**' / '*.xplane.pb'), recursive=True)


@pytest.mark.slow
def test_loss_goes_down(tmp_path):
    cfg = tiny_config(num_steps=30)
    cfg.train.log_every = 10
    cfg.checkpoint.every_steps = 100
    out = trainer.train_and_evaluate(cfg, str(tmp_path))
    lines = [json.loads(x) for x in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    train = [x['loss'] for x in lines if x['prefix'] == 'train']
    assert train[-1] < 0.5 * train[0], train
    assert out['eval']['loss'] < np.log(64) / 2


_RUN = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_trainer import tiny_config
    from codellm_jax import trainer
    cfg = tiny_config(num_steps={steps})
    cfg.checkpoint.every_steps = 2
    cfg.eval.every_steps = 0
    trainer.train_and_evaluate(cfg, sys.argv[1])
    """
)


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_is_bitwise_equal(tmp_path):
    steps = 12
    reference = trainer.train_and_evaluate(_resume_config(steps), str(tmp_path / 'ref'))
    kill_at = random.Random().randint(3, 9)
    proc = subprocess.Popen(
        [
            sys.executable,
            '-c',
            _RUN.format(tests=os.path.join(ROOT, 'tests'), steps=steps),
            str(tmp_path / 'run'),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
    )
    seen = []
    for line in proc.stdout:
        seen.append(line.decode())
        if line.startswith(f'[train] step {kill_at}/'.encode()):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, ''.join(seen)
    resumed = trainer.train_and_evaluate(_resume_config(steps), str(tmp_path / 'run'))
    assert resumed['step'] == steps
    msg = f'killed at step {kill_at}, restarted {resumed["source"]}'
    jax.tree.map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=msg),
        resumed['state'],
        reference['state'],
    )


def _resume_config(steps):
    cfg = tiny_config(num_steps=steps)
    cfg.checkpoint.every_steps = 2
    cfg.eval.every_steps = 0
    return cfg


def test_nonfinite_loss_stops_with_step_and_writes_no_checkpoint(tmp_path):
    cfg = tiny_config(num_steps=3)
    cfg.optimizer.learning_rate = float('nan')
    with pytest.raises(FloatingPointError, match='at step 1'):
        trainer.train_and_evaluate(cfg, str(tmp_path))
    assert os.listdir(tmp_path / 'checkpoints') == []


def test_nonfinite_steps_can_be_skipped(tmp_path):
    cfg = tiny_config(num_steps=2)
    cfg.optimizer.learning_rate = float('nan')
    cfg.train.on_nonfinite = 'skip'
    out = trainer.train_and_evaluate(cfg, str(tmp_path))
    assert out['step'] == 2 and out['train']['skipped_steps'] == 1  # per log window of 1
    assert all(bool(np.all(np.isfinite(x))) for x in jax.tree.leaves(out['state'].params))


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
    cfg = tiny_config()
    cfg.train.batch_size = 6  # 8 devices on ('data', 'fsdp')
    with pytest.raises(ValueError, match=r'train.batch_size=6 .* data-parallel size 8'):
        trainer.train_and_evaluate(cfg, str(tmp_path))


def test_unwritable_workdir_is_named(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('x')
    with pytest.raises(PermissionError, match='a_file/run.* is not writable'):
        trainer.train_and_evaluate(tiny_config(), str(blocker / 'run'))


def test_sft_without_initialisation_is_refused(tmp_path):
    cfg = tiny_config()
    cfg.mode = 'sft'
    cfg.data.task = 'sft'
    with pytest.raises(ValueError, match='checkpoint.init_from'):
        trainer.train_and_evaluate(cfg, str(tmp_path))


def test_flops_convention_by_hand():
    from codellm_jax.models.model_config import DecoderConfig

    cfg = DecoderConfig(
        vocab_size=10,
        d_model=4,
        num_layers=2,
        num_heads=2,
        num_kv_heads=1,
        head_dim=2,
        d_ff=8,
        tie_embeddings=True,
    )
    shapes = {
        'embed': {'embedding': np.zeros((10, 4))},
        'layers': {'w': {'kernel': np.zeros((2, 4, 8))}, 'n': {'scale': np.zeros((2, 4))}},
        'final_norm': {'scale': np.zeros((4,))},
    }
    n = 2 * 4 * 8 + 10 * 4  # the kernel + the tied output projection; norms don't count
    want = 6 * n + 12 * 2 * (16 / 2) * 4
    assert metrics.train_flops_per_token('decoder', cfg, shapes, {'input': 16}) == want


@pytest.mark.slow
def test_real_data_pipeline_and_a_missing_split(tmp_path):
    from codellm_jax.data import corpus, tfds_builders, tokenizer

    files, _ = corpus.scan(max_files=30, languages=['python'])
    tokenizer.train_tokenizer([f.text for f in files], str(tmp_path / 'tok'), vocab_size=512)
    tfds_builders.build('code_corpus', str(tmp_path / 'tfds'), max_files=30, languages=['python'])
    cfg = tiny_config(num_steps=2)
    cfg.model.vocab_size = 512
    cfg.train.data_source = 'pipeline'
    cfg.data.data_dir = str(tmp_path / 'tfds')
    cfg.data.tokenizer_path = str(tmp_path / 'tok')
    cfg.eval.num_batches = 1
    cfg.eval.split = 'train'  # 30 files leave the validation split empty
    out = trainer.train_and_evaluate(cfg, str(tmp_path / 'run'))
    assert out['step'] == 2 and 4.0 < out['eval']['loss'] < 8.0  # ~ln(512) = 6.2 at start
    cfg.eval.split = 'no_such_split'
    with pytest.raises(ValueError, match="no split 'no_such_split'"):
        trainer.evaluate(cfg, str(tmp_path / 'run'))
    # Training checks its eval split up front, before spending any steps.
    with pytest.raises(ValueError, match="no split 'no_such_split'"):
        trainer.train_and_evaluate(cfg, str(tmp_path / 'run2'))
    assert not os.listdir(tmp_path / 'run2' / 'checkpoints')
