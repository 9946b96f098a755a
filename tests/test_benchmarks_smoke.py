"""Smoke test of `experiments/benchmarks/train_step.py` at a tiny config (seconds, not minutes).

Checks the JSON contract (keys, finite positive ratios) and that both frameworks trained the
same model: the first-step losses of ours and HF PyTorch agree.
"""

import json
import math

from experiments.benchmarks import train_step

_RATIOS = (
    'speedup_vs_torch',
    'speedup_vs_hf',
    'tokens_per_s',
    'hf_tokens_per_s',
    'mfu',
    'speedup_vs_torch_cpu_time',
    'speedup_vs_torch_best',
    'jax_mfu',
    'torch_mfu',
    'jax_mfu_cpu_time',
    'torch_mfu_cpu_time',
)
_POSITIVE = (
    'jax_step_s',
    'jax_step_s_best',
    'torch_step_s',
    'torch_step_s_best',
    'matmul_flops_per_s',
    'model_flops_per_step',
    'jax_tokens_per_s',
    'torch_tokens_per_s',
    'jax_compile_s_run',
    'compile_s_2_layers',
)


def test_train_step_benchmark_quick():
    # Scanned, so the run's own compile doubles as `compile_s_2_layers` (one compile, not two).
    bc = train_step.bench_config(quick=True, scan_layers=True, threads=1)
    res = train_step.run(bc)
    json.dumps(res)  # the printed line must serialise
    for key in _RATIOS + _POSITIVE:
        assert key in res, f'missing {key}'
        assert math.isfinite(res[key]) and res[key] > 0, f'{key}={res[key]}'
    assert 'causal' in res['flop_convention']
    assert res['tokens_per_step'] == bc.batch_size * bc.seq_len
    # Same weights, same batch: ours and HF's first loss agree (f32), near log(V) at init.
    assert res['loss_rel_diff'] < 1e-5, (res['loss_jax'], res['loss_torch'])
    assert abs(res['loss_jax'] - math.log(bc.model.vocab_size)) < 1.0
    assert res['final_finite'] == 1.0


def test_flops_per_token_by_hand():
    cfg = train_step.bench_config(quick=True).model
    per_token, _ = train_step.model_flops_per_token(cfg, seq_len=32)
    d, f, v, h, k, dh, n_layers = 64, 128, 256, 4, 2, 16, 2
    per_layer = d * h * dh + 2 * d * k * dh + h * dh * d + 3 * d * f + 2 * d
    n = n_layers * per_layer + d + d * v  # final norm + lm_head; the embedding table excluded
    assert per_token == 6 * n + 12 * n_layers * 32 * h * dh
