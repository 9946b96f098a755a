"""Token-selection policies: small frozen dataclasses with `next_tokens(logits, keys)`.

A policy turns next-token logits into one token per row. Sampling filters are applied in
Hugging Face's order — temperature, then top-k, then top-p (nucleus), then min-p — each on
the distribution renormalized after the previous filter, so `Sampling(top_k=50, top_p=0.9)`
here and `generate(do_sample=True, top_k=50, top_p=0.9)` there keep the same tokens.

Randomness is per row: `keys_B` holds one PRNG key per row (the caller derives it from the
row's identity, e.g. prompt index and sample index, and folds in the step), so a row's
samples never depend on the other rows in the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

_NEG_INF = float('-inf')


@dataclasses.dataclass(frozen=True)
class Greedy:
    """argmax of the logits (ties: the lowest token id, like `torch.argmax`)."""

    def validate(self, vocab_size: int) -> None:
        del vocab_size

    def next_tokens(self, logits_BxV: jax.Array, keys_B: jax.Array) -> jax.Array:
        """int32[B] argmax tokens; `keys_B` is ignored."""
        del keys_B
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Ancestral sampling with temperature, top-k, top-p and min-p, in any combination.

    Attributes:
      temperature: logits are divided by it; > 0 (use `Greedy` for temperature 0).
      top_k: keep the k highest logits; 0 = off. Ties with the k-th logit are broken by
        index (the filter keeps exactly k tokens).
      top_p: keep the smallest prefix of tokens (by decreasing probability) whose mass
        reaches top_p; a token is kept iff the mass of strictly more likely tokens is < top_p.
        In (0, 1]; 1 = off. The most likely token is always kept. Without top-k this runs
        without a sort (`_top_p_filter_unsorted`; tokens tied at the cut are all kept).
      min_p: drop tokens with probability < min_p * (probability of the most likely token);
        in [0, 1]; 0 = off.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(
                f'temperature={self.temperature} must be > 0 for sampling; use the greedy '
                'strategy for temperature 0 (negative temperatures are meaningless).'
            )
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f'top_p={self.top_p} must be in (0, 1]; use 1.0 to disable it.')
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f'min_p={self.min_p} must be in [0, 1]; use 0.0 to disable it.')
        if self.top_k < 0:
            raise ValueError(f'top_k={self.top_k} must be >= 0; use 0 to disable it.')

    def validate(self, vocab_size: int) -> None:
        """Raises if the policy cannot apply to a vocabulary of `vocab_size` tokens."""
        if self.top_k > vocab_size:
            raise ValueError(
                f'top_k={self.top_k} exceeds the vocabulary size {vocab_size}; use top_k <= '
                f'{vocab_size} (or 0 to disable top-k).'
            )

    def _filter_sorted(self, sorted_BxK: jax.Array) -> jax.Array:
        """top-p then min-p on logits sorted in decreasing order; dropped entries -> -inf."""
        if self.top_p < 1.0:
            probs_BxK = jax.nn.softmax(sorted_BxK, axis=-1)
            mass_before_BxK = jnp.cumsum(probs_BxK, axis=-1) - probs_BxK
            keep_BxK = mass_before_BxK < self.top_p
            keep_BxK = keep_BxK.at[:, 0].set(True)
            sorted_BxK = jnp.where(keep_BxK, sorted_BxK, _NEG_INF)
        if self.min_p > 0.0:
            sorted_BxK = _min_p_filter(sorted_BxK, self.min_p, sorted_BxK[:, :1])
        return sorted_BxK

    def filter_logits(self, logits_BxV: jax.Array) -> jax.Array:
        """The processed logits over the full vocabulary (dropped tokens are -inf).

        `softmax` of this is the distribution `next_tokens` samples from; tests use it as the
        oracle.
        """
        logits_BxV = logits_BxV.astype(jnp.float32) / self.temperature
        if self.top_k == 0:
            # No sort: top-p by a threshold search, min-p elementwise.
            if self.top_p < 1.0:
                logits_BxV = _top_p_filter_unsorted(logits_BxV, self.top_p)
            if self.min_p > 0.0:
                max_Bx1 = jnp.max(logits_BxV, axis=-1, keepdims=True)
                logits_BxV = _min_p_filter(logits_BxV, self.min_p, max_Bx1)
            return logits_BxV
        sorted_BxK, idx_BxK = jax.lax.top_k(logits_BxV, self.top_k)
        sorted_BxK = self._filter_sorted(sorted_BxK)
        rows_Bx1 = jnp.arange(logits_BxV.shape[0])[:, None]
        return jnp.full_like(logits_BxV, _NEG_INF).at[rows_Bx1, idx_BxK].set(sorted_BxK)

    def next_tokens(self, logits_BxV: jax.Array, keys_B: jax.Array) -> jax.Array:
        """int32[B] tokens sampled from the filtered distribution, row b with `keys_B[b]`."""
        if self.top_k == 0:
            return sample_rows(keys_B, self.filter_logits(logits_BxV))
        # Sort only the top k, then sample a rank.
        logits_BxV = logits_BxV.astype(jnp.float32) / self.temperature
        sorted_BxK, idx_BxK = jax.lax.top_k(logits_BxV, self.top_k)
        sorted_BxK = self._filter_sorted(sorted_BxK)
        rank_B = sample_rows(keys_B, sorted_BxK)
        return jnp.take_along_axis(idx_BxK, rank_B[:, None], axis=-1)[:, 0].astype(jnp.int32)


def sample_rows(keys_B: jax.Array, logits_BxV: jax.Array) -> jax.Array:
    """int32[B]: one index per row drawn from softmax(logits) (-inf = never), row b with
    `keys_B[b]` only.

    Inverse CDF with one uniform per row: the first index whose cumulative probability
    exceeds u * total. `jax.random.categorical` draws V Gumbel variates per row instead,
    ~1 ms of a batch-8, 8192-token decoding step on 2 CPU cores (this: ~0.25 ms). An index
    is returned only where its probability is positive (the cumulative sum steps up there
    and u * total stays below the total).
    """
    probs_BxV = jax.nn.softmax(logits_BxV.astype(jnp.float32), axis=-1)
    cdf_BxV = jnp.cumsum(probs_BxV, axis=-1)
    total_B = cdf_BxV[:, -1]
    u_B = jax.vmap(lambda key: jax.random.uniform(key, ()))(keys_B)
    x_B = jnp.minimum(u_B * total_B, jnp.nextafter(total_B, 0.0))
    return jnp.sum(cdf_BxV <= x_B[:, None], axis=-1).astype(jnp.int32)


def _top_p_filter_unsorted(logits_BxV: jax.Array, top_p: float) -> jax.Array:
    """top-p without sorting the vocabulary (a full sort per step dominated sampling).

    Keeps token i iff m(p_i) < top_p, m(t) = the mass of tokens with probability > t. m is
    non-increasing, so the kept tokens are those with p_i >= t*, the smallest float t
    with m(t) < top_p: found by bisection on the bits of non-negative float32s (their
    order as integers is their order as floats), 31 masked sums over the vocabulary.
    Tokens tied with the last kept one are all kept (the sorted path keeps a prefix).
    """
    probs_BxV = jax.nn.softmax(logits_BxV, axis=-1)

    def mass_above(t_Bx1):
        return jnp.sum(jnp.where(probs_BxV > t_Bx1, probs_BxV, 0.0), axis=-1, keepdims=True)

    def bisect(_, bounds):
        lo_Bx1, hi_Bx1 = bounds  # int32 bits: m(hi) < top_p always; m(lo) >= top_p or lo=0
        mid_Bx1 = lo_Bx1 + (hi_Bx1 - lo_Bx1) // 2
        ok_Bx1 = mass_above(jax.lax.bitcast_convert_type(mid_Bx1, jnp.float32)) < top_p
        return jnp.where(ok_Bx1, lo_Bx1, mid_Bx1), jnp.where(ok_Bx1, mid_Bx1, hi_Bx1)

    max_Bx1 = jnp.max(probs_BxV, axis=-1, keepdims=True)  # m(max) = 0 < top_p
    hi_Bx1 = jax.lax.bitcast_convert_type(max_Bx1, jnp.int32)
    lo_Bx1 = jnp.zeros_like(hi_Bx1)
    lo_Bx1, hi_Bx1 = jax.lax.fori_loop(0, 31, bisect, (lo_Bx1, hi_Bx1))
    # hi is the smallest t in (lo, hi] with m(t) < top_p; t = 0 itself is checked apart.
    zero_ok_Bx1 = mass_above(jnp.zeros_like(max_Bx1)) < top_p
    threshold_Bx1 = jnp.where(zero_ok_Bx1, 0.0, jax.lax.bitcast_convert_type(hi_Bx1, jnp.float32))
    return jnp.where(probs_BxV >= threshold_Bx1, logits_BxV, _NEG_INF)


def _min_p_filter(logits_BxK: jax.Array, min_p: float, max_Bx1: jax.Array) -> jax.Array:
    """Drops tokens whose probability is below min_p times the top token's probability.

    p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p) (the normalizer cancels).
    """
    threshold_Bx1 = max_Bx1 + jnp.log(jnp.float32(min_p))
    return jnp.where(logits_BxK < threshold_Bx1, _NEG_INF, logits_BxK)


def make_policy(
    strategy: str, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> Greedy | Sampling:
    """The policy for strategy 'greedy' or 'sample' (temperature 0 sampling is greedy)."""
    if strategy == 'greedy':
        return Greedy()
    if strategy != 'sample':
        raise ValueError(f"strategy={strategy!r}; expected 'greedy' or 'sample' here.")
    if temperature < 0:
        raise ValueError(f'temperature={temperature} must be >= 0 (0 means greedy).')
    if temperature == 0:
        return Greedy()
    return Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
