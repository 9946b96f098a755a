r"""Training-step speed: our jitted train step vs HF PyTorch Llama + AdamW (CPU, or GPU).

  .venv/bin/python -m experiments.benchmarks.train_step            # full run (minutes)
  .venv/bin/python -m experiments.benchmarks.train_step --quick    # smoke run (seconds)
  .venv/bin/python -m experiments.benchmarks.train_step --scan     # layers scanned in the run
  python3 -m experiments.benchmarks.train_step --device=gpu        # both frameworks on the GPU

Ours is the project's real code path: `decoder.forward` under `steps.train_step` (loss sums,
grad, global-norm clip, `optim.make_optimizer` AdamW, the non-finite guard), jitted once by
`steps.jit_train_step` with the state donated. Theirs is transformers' `LlamaForCausalLM`
(sdpa attention) + `torch.optim.AdamW` + `clip_grad_norm_`, built from the same weights
(exported with `codellm_jax.interop.hf_llama.to_hf`), in float32, same batch, same process,
`torch.set_num_threads` = the cores XLA uses. Jax and torch steps are timed in interleaved
rounds so that load from other processes hits both alike; each round starts with one untimed
step (the first step after a switch pays the other framework's cache and thread effects).

Prints ONE JSON line. Key fields:
  jax_step_s / torch_step_s: median seconds per step over all timed steps (best/spread too);
  speedup_vs_torch: torch_step_s / jax_step_s (> 1: ours is faster); `_best`: of the best
    steps (the quietest moments); `_cpu_time`: of process CPU seconds per step;
  matmul_flops_per_s: this machine's f32 FLOP/s (best of several large jitted matmuls);
  model_flops_per_step, flop_convention: 6*N per token (N = parameters except the embedding
    table, lm_head included) + attention 12*L*T*D per token, causal counted fully;
  jax_mfu / torch_mfu: model FLOP/s as a fraction of matmul_flops_per_s;
  *_mfu_cpu_time: the same per process-CPU second (robust to other load on the machine);
  compile_s_8_layers / compile_s_32_layers: `jit(train_step).lower(...).compile()` seconds
    with `scan_layers=True` at 8 and 32 layers;
  loss_rel_diff: |first loss ours - theirs| / theirs (a same-model check; ~1e-6);
  jax_device / torch_device: where each framework ran ('cpu' / 'gpu', 'cpu' / 'cuda'; see
    `select_devices`), with the f32 matmul precision each used (on GPU, JAX's default lets
    XLA use TF32 while torch's 'highest' does not: set JAX_DEFAULT_MATMUL_PRECISION=highest
    for an f32-to-f32 comparison).

On a GPU the CPU-time keys compare nothing (process CPU seconds are the host's waiting), so
`matmul_flops_per_cpu_s`, `speedup_vs_torch_cpu_time` and `*_mfu_cpu_time` are null unless
both frameworks ran on CPU; `threads` is still torch's CPU thread count.

XLA flags chosen here (`DEFAULT_XLA_FLAGS`) are set by `main()` in this process only, before
the CPU backend starts; `--xla_flags` overrides them.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
from typing import Any

from experiments.benchmarks import devices

# The benchmark's own XLA choices (see experiments/benchmarks/README.md for what was measured:
# no flag tried beat the defaults beyond the noise, so none is set).
DEFAULT_XLA_FLAGS = ''
# The timed run unrolls the layers: on CPU at 8 layers that took ~8% less CPU per step than
# `lax.scan` (no stacked residual buffers to zero-fill, slice and update). Compile times are
# always measured with scan, as the config asks.
RUN_SCAN_LAYERS = False


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """Attributes:
    model: the decoder to train (f32).
    batch_size, seq_len: B and T of every step (B*T tokens).
    steps_per_round, rounds: timed steps = steps_per_round * rounds per framework.
    matmul_size, matmul_repeats: the FLOP/s probe (an n x n @ n x n f32 matmul).
    compile_layers: layer counts whose scanned train step compile time is reported.
    threads: CPU threads for torch (XLA uses every core of the process affinity).
    device: 'auto', 'cpu' or 'gpu' (see `devices.select_devices`).
    """

    model: Any
    batch_size: int
    seq_len: int
    steps_per_round: int = 3
    rounds: int = 3
    matmul_size: int = 2048
    matmul_repeats: int = 5
    compile_layers: tuple[int, ...] = (8, 32)
    threads: int = 1
    device: str = 'auto'


def bench_config(
    quick: bool = False, scan_layers: bool = RUN_SCAN_LAYERS, threads: int | None = None
):
    """The default benchmark (a ~30M-parameter GQA Llama) or, with `quick`, a tiny one."""
    from codellm_jax.models.model_config import DecoderConfig

    threads = threads or len(os.sched_getaffinity(0))
    if quick:
        model = DecoderConfig(
            vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
            d_ff=128, max_seq_len=64, rope_theta=10000.0, scan_layers=scan_layers,
        )  # fmt: skip
        return BenchConfig(
            model, batch_size=2, seq_len=32, steps_per_round=2, rounds=1, matmul_size=256,
            matmul_repeats=2, compile_layers=(2,), threads=threads,
        )  # fmt: skip
    model = DecoderConfig(
        vocab_size=8192, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, head_dim=64,
        d_ff=1408, max_seq_len=512, rope_theta=500000.0, scan_layers=scan_layers,
    )  # fmt: skip
    # The contract config: seq 512, batch 8, f32.
    return BenchConfig(model, batch_size=8, seq_len=512, threads=threads)


def model_flops_per_token(cfg, seq_len: int) -> tuple[float, str]:
    """Training FLOPs per token and the convention used to count them."""
    from codellm_jax.models import decoder

    n = decoder.num_params(cfg) - cfg.vocab_size * cfg.d_model  # the lookup is no matmul
    if cfg.tie_embeddings:
        n += cfg.vocab_size * cfg.d_model  # ... but the tied lm_head is
    attn = 12 * cfg.num_layers * seq_len * cfg.num_heads * cfg.head_dim
    convention = (
        '6*N + 12*L*T*D per token; N = params without the embedding table (lm_head '
        'included), D = heads*head_dim; causal attention counted fully (not halved)'
    )
    return float(6 * n + attn), convention


def matmul_flops_per_s(n: int, repeats: int) -> tuple[float, float | None]:
    """Best f32 FLOP/s of a jitted [n, n] @ [n, n] over `repeats` runs, per wall second and
    per process-CPU second (the latter is what other load on the machine inflates least)."""
    import jax
    import jax.numpy as jnp

    a_NxN = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b_NxN = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    matmul = jax.jit(jnp.dot)
    matmul(a_NxN, b_NxN).block_until_ready()
    walls, cpus = _timed(lambda: matmul(a_NxN, b_NxN).block_until_ready(), repeats)
    # A device matmul may cost the host no measurable CPU time: no per-CPU-second rate then.
    return 2.0 * n**3 / min(walls), (2.0 * n**3 / min(cpus) if min(cpus) > 0 else None)


def make_batch(cfg, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, Any]:
    """A packed-contract batch of random tokens (one segment per row, all weights 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens_BxT1 = rng.integers(0, cfg.vocab_size, size=(batch_size, seq_len + 1), dtype=np.int32)
    positions_BxT = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch_size, seq_len))
    return {
        'input_tokens': tokens_BxT1[:, :-1],
        'target_tokens': tokens_BxT1[:, 1:],
        'positions': np.ascontiguousarray(positions_BxT),
        'segment_ids': np.ones((batch_size, seq_len), np.int32),
        'loss_weights': np.ones((batch_size, seq_len), np.float32),
    }


def _optimizer_config():
    from codellm_jax import optim

    return optim.OptimizerConfig(
        learning_rate=1e-4, warmup_steps=0, decay='constant', weight_decay=0.1, grad_clip_norm=1.0
    )


def jit_step(cfg):
    """(jitted train step with the state donated, optax tx, the replicated sharding).

    One-device mesh. Place the state and batch with the returned sharding, as the trainer
    does: an uncommitted state would compile a second time at step 2 (its output carries
    the mesh).
    """
    import jax

    from codellm_jax import optim, steps

    opt_cfg = _optimizer_config()
    tx = optim.make_optimizer(opt_cfg)
    step_fn = functools.partial(
        steps.train_step,
        tx=tx,
        schedule=optim.make_schedule(opt_cfg),
        logits_fn=steps.make_logits_fn('decoder', cfg),
        cfg=steps.StepConfig(),
    )
    mesh = jax.sharding.Mesh(jax.devices()[:1], ('data',))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return steps.jit_train_step(step_fn, replicated, replicated, mesh), tx, replicated


def compile_seconds(cfg, batch_size: int, seq_len: int) -> float:
    """Seconds of `jit(train_step).lower(abstract args).compile()` (nothing allocated)."""
    import jax

    from codellm_jax import train_state as ts
    from codellm_jax.models import decoder

    jitted, tx, _ = jit_step(cfg)
    state = jax.eval_shape(lambda k: ts.create(decoder.init_params(cfg, k), tx), jax.random.key(0))
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), make_batch(cfg, batch_size, seq_len)
    )
    rng = jax.eval_shape(lambda: jax.random.key(0))
    return _timed_compile(jitted, state, batch, rng)[0]


def _timed_compile(jitted, *args) -> tuple[float, Any]:
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return time.perf_counter() - t0, compiled


def _torch_runner(cfg, params, batch, device: str = 'cpu'):
    """A closure doing one torch AdamW step (same hyper-parameters and decay mask as ours) on
    `device`; it returns after the step's work is done (on CUDA too)."""
    import torch

    from codellm_jax.interop import hf_torch

    model = hf_torch.llama_for_causal_lm(cfg, params).to(device).train()
    sync = devices.torch_sync(device)
    opt_cfg = _optimizer_config()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and 'embed_tokens' not in n]
    no_decay = [
        p for n, p in model.named_parameters() if not (p.ndim >= 2 and 'embed_tokens' not in n)
    ]
    opt = torch.optim.AdamW(
        [
            {'params': decay, 'weight_decay': opt_cfg.weight_decay},
            {'params': no_decay, 'weight_decay': 0.0},
        ],
        lr=opt_cfg.learning_rate,
        betas=(opt_cfg.b1, opt_cfg.b2),
        eps=opt_cfg.eps,
        foreach=True,
    )
    inputs = torch.as_tensor(batch['input_tokens'], dtype=torch.long, device=device)
    targets = torch.as_tensor(batch['target_tokens'], dtype=torch.long, device=device)
    positions = torch.as_tensor(batch['positions'], dtype=torch.long, device=device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=inputs, position_ids=positions).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.grad_clip_norm)
        opt.step()
        sync()
        return float(loss.detach())

    return step


def _timed(fn, n: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of `n` calls (CPU time is what load elsewhere inflates least)."""
    walls, cpus = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus


def _summary(prefix: str, walls: list[float], cpus: list[float]) -> dict[str, float]:
    med = statistics.median(walls)
    return {
        f'{prefix}_step_s': med,
        f'{prefix}_step_s_best': min(walls),
        f'{prefix}_step_spread': (max(walls) - min(walls)) / med,  # the noise, relative
        f'{prefix}_step_cpu_s': statistics.median(cpus),
    }


def run(bc: BenchConfig) -> dict[str, Any]:
    """Runs the whole benchmark in this process; returns the JSON-able result."""
    import jax
    import numpy as np
    import torch

    from codellm_jax import train_state as ts
    from codellm_jax.models import decoder

    torch.set_num_threads(bc.threads)
    jax_device, torch_device = devices.select_devices(bc.device)
    both_on_cpu = jax_device == 'cpu' and torch_device == 'cpu'
    cfg = bc.model
    res: dict[str, Any] = {
        'model': dataclasses.asdict(cfg),
        'batch_size': bc.batch_size,
        'seq_len': bc.seq_len,
        'tokens_per_step': bc.batch_size * bc.seq_len,
        'num_params': decoder.num_params(cfg),
        'threads': bc.threads,
        'jax_devices': len(jax.devices()),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'dtype': 'float32',
        'jax_device': jax_device,
        'jax_device_kind': jax.devices()[0].device_kind,
        'torch_device': torch_device,
        **devices.matmul_precisions(),
    }
    res['matmul_flops_per_s'], res['matmul_flops_per_cpu_s'] = matmul_flops_per_s(
        bc.matmul_size, bc.matmul_repeats
    )
    if jax_device != 'cpu':  # CPU seconds of a device matmul: the host waiting, not FLOP/s
        res['matmul_flops_per_cpu_s'] = None
    per_token, convention = model_flops_per_token(cfg, bc.seq_len)
    res['model_flops_per_step'] = per_token * res['tokens_per_step']
    res['flop_convention'] = convention

    batch = make_batch(cfg, bc.batch_size, bc.seq_len)
    params = jax.jit(decoder.init_params, static_argnums=0)(cfg, jax.random.key(0))
    torch_step = _torch_runner(cfg, params, batch, torch_device)  # copied before donation
    jitted, tx, replicated = jit_step(cfg)
    state = jax.jit(ts.create, static_argnums=1, out_shardings=replicated)(params, tx)
    del params
    device_batch = jax.device_put(batch, replicated)
    rng = jax.device_put(jax.random.key(0), replicated)
    # Compiled ahead of time: the run's own compile is one of the reported compile times.
    seconds, compiled = _timed_compile(jitted, state, device_batch, rng)
    res['jax_compile_s_run'] = seconds
    if cfg.scan_layers and cfg.num_layers in bc.compile_layers:
        res[f'compile_s_{cfg.num_layers}_layers'] = seconds
    holder = {'state': state}
    del state

    def jax_step() -> dict[str, Any]:
        holder['state'], metrics = compiled(holder['state'], device_batch, rng)
        return metrics

    metrics = jax_step()
    jax_loss = float(metrics['loss_sum'] / metrics['weight_sum'])
    torch_loss = torch_step()
    res['loss_jax'], res['loss_torch'] = jax_loss, torch_loss
    res['loss_rel_diff'] = abs(jax_loss - torch_loss) / abs(torch_loss)

    def jax_blocking():
        # The state too: on GPU the step runs async, and only its outputs say it is done.
        jax.block_until_ready((jax_step(), holder['state']))

    times = {'jax': ([], []), 'torch': ([], [])}
    for _ in range(bc.rounds):
        for name, fn in (('jax', jax_blocking), ('torch', torch_step)):
            # One untimed step first: the first step after the other framework ran is slower
            # (measured: jax +1-2.5 s on a ~5 s step, torch +0.2 s on ~3.6 s), which would
            # make the medians measure switching rather than training throughput.
            fn()
            walls, cpus = _timed(fn, bc.steps_per_round)
            times[name][0].extend(walls)
            times[name][1].extend(cpus)
    for name, (walls, cpus) in times.items():
        res.update(_summary(name, walls, cpus))
    res['speedup_vs_torch'] = res['torch_step_s'] / res['jax_step_s']
    # Off CPU, process CPU seconds are the host waiting on the device: no throughput ratio.
    res['speedup_vs_torch_cpu_time'] = (
        res['torch_step_cpu_s'] / res['jax_step_cpu_s'] if both_on_cpu else None
    )
    res['speedup_vs_torch_best'] = res['torch_step_s_best'] / res['jax_step_s_best']
    res['jax_tokens_per_s'] = res['tokens_per_step'] / res['jax_step_s']
    res['torch_tokens_per_s'] = res['tokens_per_step'] / res['torch_step_s']
    for name in ('jax', 'torch'):
        achieved = res['model_flops_per_step'] / res[f'{name}_step_s']
        res[f'{name}_model_flops_per_s'] = achieved
        res[f'{name}_mfu'] = achieved / res['matmul_flops_per_s']
        if both_on_cpu:
            per_cpu_s = res['model_flops_per_step'] / res[f'{name}_step_cpu_s']
            res[f'{name}_mfu_cpu_time'] = per_cpu_s / res['matmul_flops_per_cpu_s']
        else:
            res[f'{name}_mfu_cpu_time'] = None
    # The contract keys (the jax_/torch_ names above are the detailed ones).
    res['tokens_per_s'] = res['jax_tokens_per_s']
    res['mfu'] = res['jax_mfu']
    res['hf_tokens_per_s'] = res['torch_tokens_per_s']
    res['speedup_vs_hf'] = res['speedup_vs_torch']
    res['final_finite'] = float(np.asarray(jax_step()['finite']))
    holder.clear()  # frees the state before the compile-only measurements

    compile_cfg = dataclasses.replace(cfg, scan_layers=True)
    for n in bc.compile_layers:
        if f'compile_s_{n}_layers' in res:
            continue
        c = dataclasses.replace(compile_cfg, num_layers=n)
        res[f'compile_s_{n}_layers'] = compile_seconds(c, bc.batch_size, bc.seq_len)
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--quick', action='store_true', help='tiny sizes, for a smoke run')
    parser.add_argument(
        '--scan', action=argparse.BooleanOptionalAction, default=RUN_SCAN_LAYERS,
        help='lax.scan over layers in the timed run (compile times always use scan)',
    )  # fmt: skip
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: all)')
    parser.add_argument('--rounds', type=int, default=None)
    parser.add_argument('--steps-per-round', type=int, default=None)
    parser.add_argument('--xla_flags', default=None, help=f'default: {DEFAULT_XLA_FLAGS!r}')
    devices.add_device_flag(parser)
    args = parser.parse_args(argv)
    devices.pin_jax_platform(args.device)
    flags = DEFAULT_XLA_FLAGS if args.xla_flags is None else args.xla_flags
    # Read by XLA when the CPU backend starts (first use), so this stays in this process.
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flags}'.strip()
    bc = bench_config(args.quick, args.scan, args.threads)
    overrides = {
        'rounds': args.rounds,
        'steps_per_round': args.steps_per_round,
        'device': args.device,
    }
    bc = dataclasses.replace(bc, **{k: v for k, v in overrides.items() if v is not None})
    res = run(bc)
    print(json.dumps(res, sort_keys=True))
    return res


if __name__ == '__main__':
    main()
