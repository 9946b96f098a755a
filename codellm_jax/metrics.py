"""Metric writers (console with ETA, TensorBoard via tensorboardX, JSONL) and MFU FLOPs.

FLOP convention (training, per target token; forward + backward = 3 x forward):
    6 * N  +  12 * L * T_attn * H * Dh
N counts the parameters of every matmul (`kernel` leaves; embedding lookups, norms and bias
tables excluded; the output projection included, also when tied). L is the number of
attention layers, H * Dh the attention width and T_attn the keys a query attends to on
average: T for bidirectional attention (encoder), T/2 for causal attention. The attention
term is QK^T plus AV, 4 * T_attn * H * Dh FLOPs forward per layer, x3 for training (PaLM
appendix B, with the causal halving). For an encoder-decoder, encoder work is counted per
decoder token (x S/T) and cross-attention attends to S keys.
MFU = achieved model FLOPs/s / (devices * peak FLOPs/s per device).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import numpy as np

# Dense bf16 peak FLOP/s per chip, by `jax.Device.device_kind` prefix.
PEAK_FLOPS = {
    'NVIDIA H100': 989e12,
    'NVIDIA H200': 989e12,
    'NVIDIA A100': 312e12,
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v6 lite': 918e12,
}


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> float:
    """Peak FLOP/s of one device (`override` when > 0); 0.0 when unknown (e.g. CPU)."""
    if override > 0:
        return override
    for prefix, flops in PEAK_FLOPS.items():
        if device_kind.startswith(prefix):
            return flops
    return 0.0


def _matmul_params(shapes: Any) -> int:
    """Parameters of matmuls: the `kernel` leaves (not norms, embeddings or bias tables)."""
    import jax

    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        if str(getattr(path[-1], 'key', path[-1])) == 'kernel':
            total += int(np.prod(leaf.shape))
    return total


def train_flops_per_token(
    model_kind: str, model_cfg: Any, param_shapes: Any, seq_lens: Mapping
) -> float:
    """Training FLOPs per *target* token by the module docstring's convention.

    Args:
      model_kind: 'decoder' or 'encoder_decoder'.
      model_cfg: the model dataclass.
      param_shapes: the params tree (arrays or ShapeDtypeStructs).
      seq_lens: {'input': T} (decoder) or {'encoder': S, 'decoder': T}.
    """
    n = _matmul_params(param_shapes)
    tied = getattr(model_cfg, 'tie_embeddings', False)
    if tied:  # the tied output projection is a matmul over the embedding table.
        n += model_cfg.vocab_size * model_cfg.d_model
    width = model_cfg.num_heads * model_cfg.head_dim
    if model_kind == 'decoder':
        t = seq_lens['input']
        return 6.0 * n + 12.0 * model_cfg.num_layers * (t / 2) * width
    s, t = seq_lens['encoder'], seq_lens['decoder']
    # Per decoder token: encoder work is amortised over the S/T ratio of tokens.
    enc_attn = 12.0 * model_cfg.num_encoder_layers * s * width * (s / t)
    dec_attn = 12.0 * model_cfg.num_decoder_layers * (t / 2 + s) * width
    return 6.0 * n * _encdec_token_factor(model_cfg, param_shapes, s, t) + enc_attn + dec_attn


def _encdec_token_factor(model_cfg: Any, param_shapes: Any, s: int, t: int) -> float:
    """Weights encoder params by S/T (they process S encoder tokens per T decoder tokens)."""
    enc = _matmul_params(param_shapes.get('encoder', {})) if isinstance(param_shapes, dict) else 0
    total = _matmul_params(param_shapes) + (
        model_cfg.vocab_size * model_cfg.d_model if model_cfg.tie_embeddings else 0
    )
    if total == 0:
        return 1.0
    return ((total - enc) + enc * s / t) / total


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}:{m:02d}:{s:02d}' if h else f'{m:02d}:{s:02d}'


class ConsoleWriter:
    """One line per write: step/total, percentage, ETA from the recent step rate, scalars."""

    def __init__(self, total_steps: int, stream: TextIO | None = None):
        self._total = total_steps
        self._stream = stream or sys.stdout
        self._last: tuple[int, float] | None = None

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = 'train') -> None:
        now = time.time()
        eta = ''
        if prefix == 'train':
            if self._last is not None and step > self._last[0]:
                rate = (now - self._last[1]) / (step - self._last[0])
                eta = f' eta {format_duration(rate * (self._total - step))}'
            self._last = (step, now)
        pct = 100.0 * step / max(self._total, 1)
        items = ' '.join(f'{k}={_fmt(v)}' for k, v in scalars.items())
        print(
            f'[{prefix}] step {step}/{self._total} ({pct:.0f}%){eta} {items}',
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        pass


def _fmt(v: float) -> str:
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f'{v:.3e}'
    return f'{v:.4f}'


class JsonlWriter:
    """Appends `{"step", "prefix", **scalars}` lines to `<workdir>/metrics.jsonl`."""

    def __init__(self, path: str):
        self._file = open(path, 'a')  # noqa: SIM115 (closed in close())

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = 'train') -> None:
        record = {'step': int(step), 'prefix': prefix, 'time': time.time()}
        record.update({k: float(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + '\n')
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TensorBoardWriter:
    """TensorBoard event files via tensorboardX (no TensorFlow); tags `<prefix>/<name>`."""

    def __init__(self, logdir: str):
        from tensorboardX import SummaryWriter

        self._writer = SummaryWriter(logdir)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = 'train') -> None:
        for k, v in scalars.items():
            self._writer.add_scalar(f'{prefix}/{k}', float(v), global_step=int(step))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class MultiWriter:
    """Fans one write out to several writers (only process 0 should write)."""

    def __init__(self, writers: list[Any]):
        self._writers = writers

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = 'train') -> None:
        for w in self._writers:
            w.write(step, scalars, prefix)

    def close(self) -> None:
        for w in self._writers:
            w.close()


def make_writer(workdir: str, total_steps: int, is_primary: bool = True) -> MultiWriter:
    """Console + JSONL (`metrics.jsonl`) + TensorBoard (`tensorboard/`) on the primary process."""
    if not is_primary:
        return MultiWriter([])
    return MultiWriter(
        [
            ConsoleWriter(total_steps),
            JsonlWriter(os.path.join(workdir, 'metrics.jsonl')),
            TensorBoardWriter(os.path.join(workdir, 'tensorboard')),
        ]
    )
