"""optax optimizers and schedules from a frozen `OptimizerConfig`.

- AdamW: linear warmup, then cosine / linear / constant / rsqrt decay; global-norm
  clipping; decoupled weight decay masked off norm scales, (optionally) embeddings and
  T5's relative-position bias tables.
- Adafactor as the T5 recipe: factored second moments, no momentum, update clipping at
  1.0, decay rate 0.8, updates scaled by the parameter RMS, and an rsqrt schedule
  (constant `learning_rate` for `warmup_steps`, then `learning_rate * sqrt(warmup/step)`).
"""

from __future__ import annotations

import dataclasses

import jax
import optax

_DECAYS = ('cosine', 'linear', 'constant', 'rsqrt')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Attributes:
    name: 'adamw' or 'adafactor'.
    learning_rate: peak learning rate.
    warmup_steps: linear warmup from `init_lr_fraction * learning_rate` to the peak.
    decay: 'cosine', 'linear', 'constant' or 'rsqrt' (after warmup).
    total_steps: end of the decay (cosine / linear reach `end_lr_fraction * peak`).
    end_lr_fraction: final learning rate as a fraction of the peak.
    init_lr_fraction: first warmup learning rate as a fraction of the peak.
    b1, b2, eps: Adam moments.
    weight_decay: decoupled (AdamW) weight decay coefficient.
    decay_embeddings: apply weight decay to embedding tables too.
    grad_clip_norm: clip gradients to this global norm (0 disables).
    adafactor_decay_rate, adafactor_clipping_threshold: Adafactor's T5 settings.
    """

    name: str = 'adamw'
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    decay: str = 'cosine'
    total_steps: int = 1000
    end_lr_fraction: float = 0.1
    init_lr_fraction: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    grad_clip_norm: float = 1.0
    adafactor_decay_rate: float = 0.8
    adafactor_clipping_threshold: float = 1.0

    def __post_init__(self):
        if self.name not in ('adamw', 'adafactor'):
            raise ValueError(f"optimizer.name={self.name!r}; expected 'adamw' or 'adafactor'.")
        if self.decay not in _DECAYS:
            raise ValueError(f'optimizer.decay={self.decay!r}; expected one of {_DECAYS}.')
        if self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(
                f'optimizer.warmup_steps={self.warmup_steps} must be >= 0 and '
                f'optimizer.total_steps={self.total_steps} >= 1.'
            )


def make_schedule(cfg: OptimizerConfig) -> optax.Schedule:
    """Learning rate as a function of the (0-based) update count."""
    peak = cfg.learning_rate
    warmup = optax.linear_schedule(cfg.init_lr_fraction * peak, peak, max(cfg.warmup_steps, 1))
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    if cfg.decay == 'cosine':
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_fraction)
    elif cfg.decay == 'linear':
        decay = optax.linear_schedule(peak, cfg.end_lr_fraction * peak, decay_steps)
    elif cfg.decay == 'constant':
        decay = optax.constant_schedule(peak)
    else:  # rsqrt: T5's inverse square root, continuous at the end of warmup.
        w = max(cfg.warmup_steps, 1)

        def decay(count):
            return peak * jax.numpy.sqrt(w / (count + w))

    if cfg.warmup_steps == 0:
        return decay
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def weight_decay_mask(params, decay_embeddings: bool = False):
    """A pytree of bools: True where weight decay applies.

    Excluded: norm scales (`.../scale`), 1-D leaves, T5's `rel_bias` tables and, unless
    `decay_embeddings`, embedding tables (`.../embedding`).
    """

    def keep(path, leaf) -> bool:
        names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
        if names and names[-1] == 'scale':
            return False
        if getattr(leaf, 'ndim', 2) <= 1:
            return False
        if 'rel_bias' in names:
            return False
        if names and names[-1] == 'embedding' and not decay_embeddings:
            return False
        return True

    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The full gradient transformation (clipping included); the step applies it as is."""
    schedule = make_schedule(cfg)
    parts = []
    if cfg.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.name == 'adamw':
        parts.append(
            optax.adamw(
                schedule,
                b1=cfg.b1,
                b2=cfg.b2,
                eps=cfg.eps,
                weight_decay=cfg.weight_decay,
                mask=lambda p: weight_decay_mask(p, cfg.decay_embeddings),
            )
        )
    else:
        parts.append(
            optax.adafactor(
                schedule,
                decay_rate=cfg.adafactor_decay_rate,
                clipping_threshold=cfg.adafactor_clipping_threshold,
                multiply_by_parameter_scale=True,
                momentum=None,
                weight_decay_rate=cfg.weight_decay or None,
                weight_decay_mask=lambda p: weight_decay_mask(p, cfg.decay_embeddings),
            )
        )
    return optax.chain(*parts)
