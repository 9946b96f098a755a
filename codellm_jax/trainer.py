"""The training loop (`train_and_evaluate`) and offline evaluation (`evaluate`).

A run: record the workdir (config, git commit, packages, argv) → `experiment.build` →
`checkpoint.restore_or_initialize` (THE start-up order) → loop: step, log (console with ETA,
JSONL, TensorBoard), evaluate, checkpoint (async, keep-N: state + data position + config).
A non-finite loss stops the run naming the step (`train.on_nonfinite='error'`) or the update
is dropped (`'skip'`); the step never applies one, so a NaN checkpoint is never written.

Logged metrics: loss, nll, perplexity, accuracy (token-weighted over the logging window),
grad_norm, learning_rate, step_time (s), tokens_per_s (batch * length / step time, per the
whole job), target_tokens (weighted), and MFU when the device's peak FLOP/s is known (FLOP
convention in `codellm_jax.metrics`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from codellm_jax import checkpoint as ckpt_lib
from codellm_jax import experiment, losses, metrics, run_info, sharding, steps

MODES = ('pretrain', 'sft', 'eval', 'generate')
_SUM_KEYS = ('loss_sum', 'nll_sum', 'z_loss_sum', 'correct_sum', 'weight_sum')


def _model_override(config: ml_collections.ConfigDict):
    """Model from the pretrained dir when `config.model` is empty and one is given."""
    if len(config.model) == 0 and config.checkpoint.init_from_pretrained:
        from codellm_jax.interop import pretrained

        return pretrained.load_model_config(config.checkpoint.init_from_pretrained)
    return None


class _Window:
    """Accumulates step metrics between two log writes."""

    def __init__(self):
        self.sums = dict.fromkeys(_SUM_KEYS, 0.0)
        self.grad_norms: list[float] = []
        self.lr = 0.0
        self.steps = 0
        self.timed_steps = 0
        self.skipped = 0
        self.start = time.time()

    def add(self, m: dict[str, float], timed: bool = True) -> None:
        self.steps += 1
        self.timed_steps += int(timed)
        if m['finite']:
            for k in _SUM_KEYS:
                self.sums[k] += float(m[k])
            self.grad_norms.append(float(m['grad_norm']))
        else:
            self.skipped += 1
        self.lr = float(m['learning_rate'])


def _summary(win: _Window, tokens_per_step: int, flops_per_token: float, peak: float) -> dict:
    elapsed = max(time.time() - win.start, 1e-9)
    out = {k: float(v) for k, v in losses.summarize(win.sums).items() if k != 'num_tokens'}
    out['grad_norm'] = float(np.mean(win.grad_norms)) if win.grad_norms else float('nan')
    out['learning_rate'] = win.lr
    out['step_time'] = elapsed / max(win.timed_steps, 1)
    out['tokens_per_s'] = tokens_per_step * win.timed_steps / elapsed
    out['target_tokens'] = win.sums['weight_sum']
    if peak > 0:
        out['mfu'] = out['tokens_per_s'] * flops_per_token / (peak * jax.device_count())
    if win.skipped:
        out['skipped_steps'] = win.skipped
    return out


def _restore_or_initialize(exp, ckpt, tx, data_iter=None):
    """`checkpoint.restore_or_initialize` for this experiment, under its sharding rules."""
    init_state, state_from_params = experiment.state_initializers(exp, tx)
    with sharding.logical_rules(exp.mesh, exp.rules):
        return ckpt_lib.restore_or_initialize(
            ckpt,
            exp.ckpt_cfg,
            abstract_state=exp.abstract_state,
            init_state=init_state,
            state_from_params=state_from_params,
            data_iter=data_iter,
        )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains per `config` (modes 'pretrain' and 'sft'), resuming from `workdir` if possible.

    Returns {'step', 'train': last logged train metrics, 'eval': last eval metrics,
    'eval_start': eval before the first step (if `eval.at_start`), 'source': where the
    state came from, 'state': the final TrainState}.
    """
    workdir = run_info.ensure_writable(workdir)
    exp, tx, schedule = experiment.build(config, _model_override(config))
    if jax.process_index() == 0:
        run_info.record(workdir, config)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), exp.ckpt_cfg)
    experiment.check_mode(config, exp, ckpt)
    train_iter = experiment.make_iterator(exp, 'train', exp.train_cfg.batch_size)
    if exp.eval_cfg.num_batches and (exp.eval_cfg.every_steps or exp.eval_cfg.at_start):
        # Fail now on a missing eval split, not after hours of training.
        experiment.make_iterator(exp, exp.eval_cfg.split, exp.eval_cfg.batch_size, num_epochs=1)
    state, source = _restore_or_initialize(exp, ckpt, tx, data_iter=train_iter)
    logging.info('Train state %s (step %d).', source, int(state.step))
    print(f'Train state {source} (step {int(state.step)}).', flush=True)
    logits_fn = steps.make_logits_fn(exp.model_kind, exp.model_cfg)
    train_fn = steps.jit_train_step(
        functools.partial(
            steps.train_step, tx=tx, schedule=schedule, logits_fn=logits_fn, cfg=exp.step_cfg
        ),
        exp.state_shardings,
        exp.batch_sharding,
        exp.mesh,
    )
    eval_fn = experiment.make_eval_fn(exp)
    tc, ec = exp.train_cfg, exp.eval_cfg
    lens = experiment.seq_lens(exp)
    tokens_per_step = tc.batch_size * (lens.get('input') or lens['decoder'])
    flops_per_token = metrics.train_flops_per_token(
        exp.model_kind, exp.model_cfg, exp.abstract_state.params, lens
    )
    peak = metrics.peak_flops_per_device(jax.devices()[0].device_kind, tc.peak_flops_per_device)
    writer = metrics.make_writer(workdir, tc.num_steps, jax.process_index() == 0)
    config_json = json.loads(config.to_json())
    rng = jax.random.key(tc.seed)
    result: dict[str, Any] = {'source': source, 'train': {}, 'eval': {}}
    step = int(state.step)
    first_step = step + 1
    win = _Window()
    profiling = False
    try:
        with sharding.logical_rules(exp.mesh, exp.rules):
            if ec.at_start and ec.num_batches:
                result['eval_start'] = experiment.run_eval(
                    exp, eval_fn, state.params, ec.split, ec.num_batches
                )
                writer.write(step, result['eval_start'], f'eval_{ec.split}')
            while step < tc.num_steps:
                if step == tc.profile_start_step:
                    jax.profiler.start_trace(os.path.join(workdir, 'profile'))
                    profiling = True
                batch = experiment.global_batch(exp, next(train_iter))
                state, m = train_fn(state, batch, rng)
                step += 1
                m = jax.device_get(m)
                if not m['finite'] and exp.step_cfg.on_nonfinite == 'error':
                    raise FloatingPointError(
                        f'Non-finite loss or gradient at step {step} (loss_sum='
                        f'{float(m["loss_sum"])}, grad_norm={float(m["grad_norm"])}); the update '
                        'was not applied and no checkpoint of it is written. Lower the learning '
                        "rate, or set train.on_nonfinite='skip' to drop such steps."
                    )
                if not m['finite']:
                    logging.warning('Skipped step %d: non-finite loss or gradient.', step)
                if step == first_step:  # compile + run: not counted in step time
                    print(f'First step (compile + run) took {time.time() - win.start:.1f}s.')
                    win.start = time.time()
                win.add(m, timed=step != first_step)
                if profiling and step >= tc.profile_start_step + tc.profile_num_steps:
                    jax.block_until_ready(state)
                    jax.profiler.stop_trace()
                    profiling = False
                if step % tc.log_every == 0 or step == tc.num_steps:
                    result['train'] = _summary(win, tokens_per_step, flops_per_token, peak)
                    writer.write(step, result['train'], 'train')
                    win = _Window()
                paused = time.time()
                if ec.every_steps and (step % ec.every_steps == 0 or step == tc.num_steps):
                    result['eval'] = experiment.run_eval(
                        exp, eval_fn, state.params, ec.split, ec.num_batches
                    )
                    writer.write(step, result['eval'], f'eval_{ec.split}')
                if step % exp.ckpt_cfg.every_steps == 0 or step == tc.num_steps:
                    ckpt.save(step, state, train_iter, config_json)
                win.start += time.time() - paused  # eval and saving are not step time
            if not result['eval'] and ec.num_batches and (ec.every_steps or ec.at_start):
                # Nothing left to train (a finished run restarted): still report its eval.
                result['eval'] = experiment.run_eval(
                    exp, eval_fn, state.params, ec.split, ec.num_batches
                )
    finally:
        if profiling:
            jax.profiler.stop_trace()
        ckpt.close()
        writer.close()
    result['step'] = step
    result['state'] = state
    return result


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Loss and perplexity of the latest checkpoint in `workdir` (else `checkpoint.init_from`
    / `init_from_pretrained`) on `config.eval.split`; writes `eval_<split>.json`."""
    workdir = run_info.ensure_writable(workdir)
    exp, tx, _ = experiment.build(config, _model_override(config))
    if jax.process_index() == 0:
        run_info.record(workdir, config)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), exp.ckpt_cfg)
    has_init = ckpt.latest_step() is not None or exp.ckpt_cfg.init_from
    if not (has_init or exp.ckpt_cfg.init_from_pretrained):
        ckpt.close()
        raise ValueError(
            f'Nothing to evaluate: no checkpoint in {workdir!r} and neither '
            'checkpoint.init_from nor checkpoint.init_from_pretrained is set.'
        )
    state, source = _restore_or_initialize(exp, ckpt, tx)
    ckpt.close()
    ec = exp.eval_cfg
    out = experiment.run_eval(
        exp, experiment.make_eval_fn(exp), state.params, ec.split, ec.num_batches
    )
    out = {k: float(v) for k, v in out.items()}
    print(f'[eval] {source} split={ec.split} ' + ' '.join(f'{k}={v:.4f}' for k, v in out.items()))
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f'eval_{ec.split}.json'), 'w') as f:
            json.dump({'source': source, 'step': int(state.step), **out}, f, indent=2)
    return out


def run(config: ml_collections.ConfigDict, workdir: str, mode: str | None = None):
    """Dispatches by mode (`mode` overrides `config.mode`): what `main` and `demo` call."""
    mode = mode or config.mode
    if mode not in MODES:
        raise ValueError(f'mode={mode!r}; expected one of {MODES}.')
    config.mode = mode
    run_info.ensure_writable(workdir)
    if mode in ('pretrain', 'sft'):
        return train_and_evaluate(config, workdir)
    if mode == 'eval':
        return evaluate(config, workdir)
    from codellm_jax import generate

    if jax.process_index() == 0:
        run_info.record(workdir, config)
    return generate.run_generate(config, workdir)
