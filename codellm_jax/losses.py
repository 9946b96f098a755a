"""Token-weighted cross entropy, returned as sums so accumulation and averaging stay exact.

The training objective over a (global) batch is

    L = -(1/n) * sum_i w_i * log P(y_i),    n = sum_i w_i

(plus the optional z-loss term). Every function here returns the *sums* and the weight `n`;
the caller divides once, after summing over microbatches (and hosts), so gradient
accumulation equals one big batch and multi-host averaging is weighted by tokens.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Static choices of the loss.

    Attributes:
      label_smoothing: mass spread uniformly over the vocabulary (0 = plain CE). The reported
        `loss` is the smoothed cross entropy minus its minimum, so a perfect model scores 0
        (as in t5x); `nll` is always the unsmoothed negative log-likelihood.
      z_loss: coefficient of `log(Z)**2` (PaLM's auxiliary loss keeping the softmax normaliser
        near 1); 0 disables it.
    """

    label_smoothing: float = 0.0
    z_loss: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f'label_smoothing={self.label_smoothing} must be in [0, 1).')
        if self.z_loss < 0.0:
            raise ValueError(f'z_loss={self.z_loss} must be >= 0.')


def cross_entropy_sums(
    logits_BxTxV: jax.Array,
    targets_BxT: jax.Array,
    weights_BxT: jax.Array,
    cfg: LossConfig = LossConfig(),
) -> dict[str, jax.Array]:
    """Token-weighted cross-entropy sums.

    Args:
      logits_BxTxV: unnormalised scores, any float dtype (computed in float32).
      targets_BxT: int target ids.
      weights_BxT: per-token weights (0 on padding / prompt tokens).
      cfg: label smoothing and z-loss.

    Returns:
      Scalars (float32): `loss_sum` (the objective's numerator: smoothed CE + z-loss,
      weighted), `nll_sum` (weighted -log P(y)), `z_loss_sum`, `correct_sum` (weighted
      argmax hits) and `weight_sum` (n).
    """
    logits_BxTxV = logits_BxTxV.astype(jnp.float32)
    weights_BxT = weights_BxT.astype(jnp.float32)
    vocab = logits_BxTxV.shape[-1]
    log_z_BxT = jax.nn.logsumexp(logits_BxTxV, axis=-1)
    logp_BxTxV = logits_BxTxV - log_z_BxT[..., None]
    target_logp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
    nll_BxT = -target_logp_BxT
    if cfg.label_smoothing > 0.0:
        eps = cfg.label_smoothing
        on, off = 1.0 - eps + eps / vocab, eps / vocab
        # Smoothed CE = -(on - off) * logp[y] - off * sum_v logp[v]; subtract its entropy floor.
        ce_BxT = -(on - off) * target_logp_BxT - off * jnp.sum(logp_BxTxV, axis=-1)
        floor = -(on * jnp.log(on) + (vocab - 1) * off * jnp.log(off))
        ce_BxT = ce_BxT - floor
    else:
        ce_BxT = nll_BxT
    z_BxT = cfg.z_loss * jnp.square(log_z_BxT) if cfg.z_loss > 0.0 else jnp.zeros_like(nll_BxT)
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    return {
        'loss_sum': jnp.sum((ce_BxT + z_BxT) * weights_BxT),
        'nll_sum': jnp.sum(nll_BxT * weights_BxT),
        'z_loss_sum': jnp.sum(z_BxT * weights_BxT),
        'correct_sum': jnp.sum(correct_BxT * weights_BxT),
        'weight_sum': jnp.sum(weights_BxT),
    }


def summarize(sums: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-token means from accumulated sums: loss, nll, perplexity, accuracy, z_loss.

    A zero weight gives zero means (never NaN), so an all-padding batch is harmless.
    """
    n = sums['weight_sum']
    denom = jnp.maximum(n, 1e-8)
    nll = sums['nll_sum'] / denom
    return {
        'loss': sums['loss_sum'] / denom,
        'nll': nll,
        'perplexity': jnp.exp(nll),
        'accuracy': sums['correct_sum'] / denom,
        'z_loss': sums['z_loss_sum'] / denom,
        'num_tokens': n,
    }
