r"""Decoding speed: our jitted JAX decoding vs Hugging Face `generate()` in PyTorch.

  PYTHONPATH=. .venv/bin/python experiments/benchmarks/decode.py          # full run (minutes)
  PYTHONPATH=. .venv/bin/python experiments/benchmarks/decode.py --quick  # smoke run
  python3 -m experiments.benchmarks.decode --device=gpu --repeats=1       # both on the GPU

The same random weights (our init, loaded into HF by `codellm_jax.interop.hf_torch`) run
in both, in float32, on CPU (or see `--device`), with the same number of threads, in one
process. Model: Llama with d_model 512, 8 layers, 8 heads (8 kv heads), SwiGLU 1408, vocab
8192; prompts of 64 tokens; 256 new tokens (eos disabled, so every run generates all of them).

Prints ONE JSON line: `<case>_speedup_vs_hf` = our tokens/s / HF tokens/s for greedy (batch
1 and 8), beam search (4 beams, batch 1) and top-p sampling (p=0.9, batch 8);
`per_token_growth_512_vs_64` = our ms/token at 512 new tokens / at 64 (greedy, batch 1);
raw tokens/s; and `greedy_tokens_match` (our greedy tokens == HF's, a correctness check).
The physical limit of a step is measured too, for batch 1 and 8: `matvec_floor_ms_b*_{jax,
torch}` is one step's weight matmuls alone (no attention, norms or sampling) in each
framework; `greedy_b*_floor_over_step_jax` = that floor / our ms per step (<= 1), and
`greedy_b*_speedup_bound_vs_hf` = HF's ms per step / our floor, the best ratio XLA's matmuls
allow on this machine.
Times are the best of `--repeats` runs after a warm-up (which compiles ours).

`--device` (see `devices.select_devices`): 'auto' (default) runs HF on CUDA when JAX's
default backend is the GPU and torch sees CUDA, else on CPU; `jax_device` / `torch_device`
and each framework's f32 matmul precision are in the JSON line (on GPU JAX's default lets XLA
use TF32, torch's does not: JAX_DEFAULT_MATMUL_PRECISION=highest compares f32 with f32). On
a GPU the floors are still measured but are no CPU matvec floors: streaming the weights
takes a few tens of microseconds there, so the chains mostly time kernel launches (torch's
from Python) and `greedy_b*_speedup_bound_vs_hf` says little; `threads` stays torch's CPU
thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

from codellm_jax import generate
from codellm_jax.generate import generator
from codellm_jax.interop import hf_torch
from codellm_jax.models import decoder, layers
from codellm_jax.models.model_config import DecoderConfig
from experiments.benchmarks import devices


def _model_config(quick: bool) -> DecoderConfig:
    if quick:
        return DecoderConfig(
            vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16,
            d_ff=128, max_seq_len=1024, rope_theta=10000.0,
        )  # fmt: skip
    return DecoderConfig(
        vocab_size=8192, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, head_dim=64,
        d_ff=1408, max_seq_len=1024, rope_theta=10000.0,
    )  # fmt: skip


def _best_of(fn, repeats: int, sync=lambda: None) -> tuple[float, object]:
    """Best wall seconds of `fn()` (and its output); `sync()` waits for work `fn` queued
    on a device before the clock is read (ours needs none: `generate` returns host values)."""
    out, best = None, float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _ours(gen, prompts, n_new, repeats, **kw):
    cfg = generate.GenerateConfig(max_new_tokens=n_new, eos_ids=(), batch_size=len(prompts), **kw)
    gen.generate(prompts, cfg)  # compile
    seconds, out = _best_of(lambda: gen.generate(prompts, cfg), repeats)
    return len(prompts) * n_new / seconds, out


def _hf(model, prompts, n_new, repeats, **kw):
    ids = torch.as_tensor(prompts, dtype=torch.long, device=model.device)
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, eos_token_id=None, pad_token_id=0, **kw)

    def run():
        with torch.no_grad():
            return model.generate(ids, attention_mask=torch.ones_like(ids), **kw)

    model.generate(ids[:, :8], attention_mask=torch.ones_like(ids[:, :8]), max_new_tokens=2,
                   pad_token_id=0, eos_token_id=None)  # fmt: skip
    seconds, out = _best_of(run, repeats, devices.torch_sync(model.device.type))
    return len(prompts) * n_new / seconds, out


_SEPARATE = (('attn', 'q'), ('attn', 'k'), ('attn', 'v'), ('attn', 'o'),
             ('mlp', 'gate'), ('mlp', 'up'), ('mlp', 'down'))  # fmt: skip


def _layer_kernels(layout, num_layers: int, names) -> list[tuple]:
    """Per layer, the 'kernel_t' [N, D_in] of each (block, projection) in `names`."""
    return [
        tuple(layout[f'{decoder.LAYER_PREFIX}{i}'][a][m]['kernel_t'] for a, m in names)
        for i in range(num_layers)
    ]


def _matvec_chains(cfg: DecoderConfig, params, rows: int, torch_device: str = 'cpu'):
    """One decoding step's weight matmuls alone, in each framework: (jax fn, torch fn).

    Per layer: q, k, v from one input, o, gate and up from one input, down; then the output
    head. A tanh keeps each layer dependent on the last; k and v are summed over their
    features so that every weight is streamed whole (a slice of a matmul's output lets XLA
    slice the weight instead). No attention, norms or sampling: this is the floor set by
    each framework's [rows, D] @ [D, N] kernels streaming the weights, which a decoding
    step cannot beat. JAX runs the matmuls as our decoding step does: the decoding layout
    (`decoder.decode_layout`, kernels [N, D]) through `layers.matmul_weight_lhs`, with q, k
    and v as one matmul where the generator fuses them (`generator.fuses_qkv(rows)`); torch
    runs HF's three.
    """
    fuse = generator.fuses_qkv(rows)
    dec = decoder.decode_layout(params, fuse_qkv=fuse)
    names = ((('attn', 'qkv'),) + _SEPARATE[3:]) if fuse else _SEPARATE
    q_rows = cfg.num_heads * cfg.head_dim
    mats = _layer_kernels(dec, cfg.num_layers, names)  # fused: (qkv, o, gate, up, down)
    head = params['embed']['embedding'] if cfg.tie_embeddings else dec['lm_head']['kernel_t']
    mm = layers.matmul_weight_lhs

    def attn_in(x, qkv_mats):
        """The query, plus the sums of k and v (every weight streamed whole)."""
        if fuse:
            out = mm(qkv_mats[0], x)
            q, kv = out[..., :q_rows], out[..., q_rows:]
            return q + jnp.sum(kv, -1, keepdims=True)
        wq, wk, wv = qkv_mats
        k_sum = jnp.sum(mm(wk, x), -1, keepdims=True) + jnp.sum(mm(wv, x), -1, keepdims=True)
        return mm(wq, x) + k_sum

    def jax_step(x, mats, head):
        for layer in mats:
            *qkv_mats, wo, wg, wu, wd = layer
            h = jnp.tanh(attn_in(x, qkv_mats))
            x = x + jnp.tanh(mm(wo, h))
            x = x + mm(wd, jnp.tanh(mm(wg, x)) * mm(wu, x))
        return x + 1e-9 * jnp.max(mm(head, x))

    @jax.jit
    def jax_chain(x, mats, head, steps):
        return jax.lax.fori_loop(0, steps, lambda _, x: jax_step(x, mats, head), x)

    # torch.nn.functional.linear takes the weight as [out, in], the same arrays (q, k, v apart).
    torch_layout = decoder.decode_layout(params) if fuse else dec
    t_mats = [
        tuple(torch.from_numpy(np.array(w)).to(torch_device) for w in layer)
        for layer in _layer_kernels(torch_layout, cfg.num_layers, _SEPARATE)
    ]
    t_head = torch.from_numpy(np.array(head)).to(torch_device)
    sync = devices.torch_sync(torch_device)
    linear = torch.nn.functional.linear

    def torch_chain(x, steps):
        with torch.no_grad():
            for _ in range(steps):
                for wq, wk, wv, wo, wg, wu, wd in t_mats:
                    k_sum = linear(x, wk).sum(-1, keepdim=True) + linear(x, wv).sum(
                        -1, keepdim=True
                    )
                    h = torch.tanh(linear(x, wq) + k_sum)
                    x = x + torch.tanh(linear(h, wo))
                    x = x + linear(torch.tanh(linear(x, wg)) * linear(x, wu), wd)
                x = x + 1e-9 * linear(x, t_head).max()
        return x

    x0 = jnp.zeros((rows, cfg.d_model), jnp.float32)
    mats_j = jax.device_put(mats)

    def run_jax(steps):
        return jax.block_until_ready(jax_chain(x0, mats_j, head, steps))

    def run_torch(steps):
        out = torch_chain(torch.zeros(rows, cfg.d_model, device=torch_device), steps)
        sync()
        return out

    return run_jax, run_torch


def _floor_ms(run, steps: int, repeats: int) -> float:
    run(2)  # compile / warm up
    seconds, _ = _best_of(lambda: run(steps), repeats)
    return 1000.0 * seconds / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, for a smoke run')
    parser.add_argument('--repeats', type=int, default=2)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    devices.add_device_flag(parser)
    args = parser.parse_args()
    devices.pin_jax_platform(args.device)  # before JAX's first backend use
    jax_device, torch_device = devices.select_devices(args.device)
    torch.set_num_threads(args.threads)
    n_new = 16 if args.quick else 256
    cfg = _model_config(args.quick)
    params = jax.jit(decoder.init_params, static_argnums=0)(cfg, jax.random.key(0))
    model = hf_torch.llama_for_causal_lm(cfg, params).to(torch_device)
    gen = generate.make_generator('decoder', cfg, params, None)
    rng = np.random.default_rng(0)
    prompts8 = rng.integers(1, cfg.vocab_size, size=(8, 64)).tolist()
    prompts1 = prompts8[:1]
    res: dict[str, object] = {}
    cases = {
        'greedy_b1': (prompts1, {}, {'do_sample': False}),
        'greedy_b8': (prompts8, {}, {'do_sample': False}),
        'beam4_b1': (
            prompts1,
            {'strategy': 'beam', 'num_beams': 4},
            {'do_sample': False, 'num_beams': 4, 'early_stopping': False},
        ),
        'topp_b8': (
            prompts8,
            {'strategy': 'sample', 'top_p': 0.9},
            {'do_sample': True, 'top_p': 0.9, 'top_k': 0},
        ),
    }
    for name, (prompts, ours_kw, hf_kw) in cases.items():
        ours_tps, ours_out = _ours(gen, prompts, n_new, args.repeats, **ours_kw)
        hf_tps, hf_out = _hf(model, prompts, n_new, args.repeats, **hf_kw)
        res[f'{name}_speedup_vs_hf'] = round(ours_tps / hf_tps, 3)
        res[f'{name}_tokens_per_s_jax'] = round(ours_tps, 1)
        res[f'{name}_tokens_per_s_hf'] = round(hf_tps, 1)
        print(f'{name}: jax {ours_tps:.1f} tok/s, hf {hf_tps:.1f} tok/s', file=sys.stderr)
        if name == 'greedy_b1':
            res['greedy_tokens_match'] = ours_out[0][0].tokens == hf_out[0, 64:].tolist()
    # The weight-streaming floor of a step (see `_matvec_chains`), per framework.
    for rows, name in ((1, 'greedy_b1'), (8, 'greedy_b8')):
        run_jax, run_torch = _matvec_chains(cfg, params, rows, torch_device)
        floor_jax = _floor_ms(run_jax, 32, args.repeats)
        floor_torch = _floor_ms(run_torch, 32, args.repeats)
        ours_ms = 1000.0 * rows / res[f'{name}_tokens_per_s_jax']
        hf_ms = 1000.0 * rows / res[f'{name}_tokens_per_s_hf']
        res[f'matvec_floor_ms_b{rows}_jax'] = round(floor_jax, 3)
        res[f'matvec_floor_ms_b{rows}_torch'] = round(floor_torch, 3)
        res[f'{name}_ms_per_step_jax'] = round(ours_ms, 3)
        res[f'{name}_ms_per_step_hf'] = round(hf_ms, 3)
        # <= 1: how close a step comes to XLA's own matmul floor;
        res[f'{name}_floor_over_step_jax'] = round(floor_jax / ours_ms, 3)
        # the speedup over HF this machine allows with XLA's matmuls if all else were free.
        res[f'{name}_speedup_bound_vs_hf'] = round(hf_ms / floor_jax, 3)
    ms = {}
    for n in (64, 512):
        tps, _ = _ours(gen, prompts1, n, args.repeats)
        ms[n] = 1000.0 / tps
    res['per_token_growth_512_vs_64'] = round(ms[512] / ms[64], 3)
    res['ms_per_token_jax_64'] = round(ms[64], 3)
    res['ms_per_token_jax_512'] = round(ms[512], 3)
    res.update(
        threads=args.threads,
        device=jax.devices()[0].device_kind,
        jax_device=jax_device,
        torch_device=torch_device,
        **devices.matmul_precisions(),
        new_tokens=n_new,
        prompt_tokens=64,
        quick=args.quick,
    )
    print(json.dumps(res))


if __name__ == '__main__':
    main()
