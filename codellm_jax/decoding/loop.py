"""Greedy and sampled decoding in one `lax.while_loop`, knowing nothing of the model.

The model is a callback `tokens_to_logits(tokens_RxT, positions_RxT, cache) ->
(logits_RxTxV, cache)` over a blocked KV cache (the contract of
`codellm_jax.models.kv_cache`: a query at position p attends to the cached and new keys at
positions 0..p; the call writes its keys at the cache's index in its last block). Prompts are
RIGHT-padded to width T: all rows prefill in one call (pads at position -1) and the first
new token of row r comes from the logits at `len_r - 1`; row r then continues at its own
position `len_r + i` while every row writes the same cache slot, T + i. The loop runs in
phases, one per cache block (`phases`), so attention reads only the filled blocks.

Stopping, per row, whichever comes first:
  * an eos id (the eos token is kept in the output, like Hugging Face);
  * a stop sequence of token ids (`stop_ids_SxM`, left-padded with -1) matching the end of
    the GENERATED tokens (the prompt is not looked at); the stop tokens are kept;
  * `max_new_tokens`.
After a row stops, its tokens are `pad_id` and its score no longer changes. The loop exits
as soon as every row has stopped. Text-level stop strings (exact whatever the tokenization)
are applied after detokenization by `codellm_jax.generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax.decoding import phases
from codellm_jax.decoding.sampling import Greedy, Sampling

Cache = Any
TokensToLogits = Callable[[jax.Array, jax.Array, Cache], tuple[jax.Array, Cache]]

# Fills the generated-token history before the first token: matches no stop id (>= 0) and
# no wildcard is needed to skip it, so a stop sequence never matches across the prompt.
_BEFORE_START = -2


@flax.struct.dataclass
class DecodeResult:
    """Output of `decode`.

    Attributes:
      tokens_RxN: int32, generated tokens; `pad_id` after a row stopped.
      lengths_R: int32, number of generated tokens including the eos / stop tokens.
      scores_R: float32, sum of the model's log-probabilities (raw logits, before
        temperature and filtering) of the generated tokens.
      stopped_R: bool, True where the row ended by eos or a stop sequence (not by length).
      cache: the final cache (return it from a jitted caller that donates the input cache,
        so the loop reuses that buffer).
    """

    tokens_RxN: jax.Array
    lengths_R: jax.Array
    scores_R: jax.Array
    stopped_R: jax.Array
    cache: Cache


@flax.struct.dataclass
class DecodeState:
    """The `lax.while_loop` carry of `decode`.

    history_RxW holds W = M - 1 + N columns: M - 1 leading `_BEFORE_START` columns (M = the
    longest stop sequence) followed by the N generated tokens, so the last M generated
    tokens are always one `dynamic_slice` away.
    """

    step: jax.Array  # int32[], tokens generated so far
    history_RxW: jax.Array
    lengths_R: jax.Array
    scores_R: jax.Array
    done_R: jax.Array
    stopped_R: jax.Array
    cache: Cache


def stop_sequence_array(stop_ids: Sequence[Sequence[int]]) -> np.ndarray | None:
    """int32[S, M] stop sequences left-padded with -1 (a wildcard), or None if there are none."""
    stop_ids = [list(s) for s in stop_ids if len(s)]
    if not stop_ids:
        return None
    width = max(len(s) for s in stop_ids)
    out = np.full((len(stop_ids), width), -1, np.int32)
    for i, s in enumerate(stop_ids):
        out[i, width - len(s) :] = s
    return out


def ends_with_stop(window_XxM: jax.Array, stop_ids_SxM: jax.Array) -> jax.Array:
    """bool[X]: whether each window of the last M tokens ends with any stop sequence."""
    match_XxSxM = (window_XxM[:, None, :] == stop_ids_SxM[None]) | (stop_ids_SxM[None] < 0)
    return jnp.any(jnp.all(match_XxSxM, axis=-1), axis=-1)


def is_eos(tokens: jax.Array, eos_ids: tuple[int, ...]) -> jax.Array:
    """bool, same shape as `tokens`: token is one of `eos_ids`."""
    hit = jnp.zeros(tokens.shape, jnp.bool_)
    for eos in eos_ids:
        hit = hit | (tokens == eos)
    return hit


def prefill(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    prompt_RxT: jax.Array,
    prompt_len_R: jax.Array,
) -> tuple[jax.Array, Cache]:
    """One call over the right-padded prompts into the cache's first block.

    Pads get position -1 (never attended to). Returns (logits_RxV at len_r - 1, the whole
    cache with the prompt written).
    """
    rows, width = prompt_RxT.shape
    phases.plan(phases.block_sizes(cache), width, 1)  # the prompt fits block 0
    positions_RxT = phases.prefill_positions(prompt_len_R, width)
    logits_RxTxV, first = tokens_to_logits(prompt_RxT, positions_RxT, phases.view(cache, 1, 0))
    last_R = jnp.clip(prompt_len_R - 1, 0, width - 1)
    logits_RxV = jnp.take_along_axis(logits_RxTxV, last_R[:, None, None], axis=1)[:, 0]
    return logits_RxV.astype(jnp.float32), phases.merge(cache, first)


def row_keys(seed: int | jax.Array, row_ids_R: jax.Array) -> jax.Array:
    """One PRNG key per row from a seed and each row's global id (batch-independent)."""
    base = jax.random.key(seed) if not isinstance(seed, jax.Array) else seed
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(row_ids_R)


def decode(
    tokens_to_logits: TokensToLogits,
    cache: Cache,
    prompt_RxT: jax.Array,
    prompt_len_R: jax.Array,
    *,
    policy: Greedy | Sampling,
    max_new_tokens: int,
    eos_ids: tuple[int, ...] = (),
    stop_ids_SxM: np.ndarray | None = None,
    pad_id: int = 0,
    keys_R: jax.Array | None = None,
) -> DecodeResult:
    """Greedy or sampled decoding: prefill in one call, then one token per loop step.

    Args:
      tokens_to_logits: the model callback (see module docstring).
      cache: the model's blocked KV cache (`codellm_jax.models.kv_cache`) with R rows,
        T slots or more in its first block and T + max_new_tokens - 1 in all (`phases`).
      prompt_RxT: int32 right-padded prompts (rows to decode; repeat a prompt for several
        samples of it).
      prompt_len_R: int32 true lengths, >= 1 (encoder-decoders pass the start token).
      policy: `Greedy()` or `Sampling(...)` (static).
      max_new_tokens: N, static.
      eos_ids: static tuple of end-of-sequence ids.
      stop_ids_SxM: static stop sequences from `stop_sequence_array`, or None.
      pad_id: what fills tokens after a row stopped.
      keys_R: per-row PRNG keys (from `row_keys`); step i uses fold_in(keys_R[r], i).
        Required for `Sampling`.

    Returns:
      `DecodeResult`.
    """
    rows = prompt_RxT.shape[0]
    if keys_R is None:
        if isinstance(policy, Sampling):
            raise ValueError('Sampling needs per-row PRNG keys: pass keys_R=row_keys(...).')
        keys_R = row_keys(0, jnp.arange(rows))
    stop_width = 0 if stop_ids_SxM is None else stop_ids_SxM.shape[1]
    prompt_len_R = prompt_len_R.astype(jnp.int32)

    logits_RxV, cache = prefill(tokens_to_logits, cache, prompt_RxT, prompt_len_R)
    history_RxW = jnp.full((rows, max(stop_width - 1, 0) + max_new_tokens), pad_id, jnp.int32)
    if stop_width > 1:
        history_RxW = history_RxW.at[:, : stop_width - 1].set(_BEFORE_START)
    state = DecodeState(
        step=jnp.int32(0),
        history_RxW=history_RxW,
        lengths_R=jnp.zeros((rows,), jnp.int32),
        scores_R=jnp.zeros((rows,), jnp.float32),
        done_R=jnp.zeros((rows,), jnp.bool_),
        stopped_R=jnp.zeros((rows,), jnp.bool_),
        cache=cache,
    )

    def select(state: DecodeState, logits_RxV: jax.Array) -> DecodeState:
        step = state.step
        step_keys_R = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_R, step)
        token_R = policy.next_tokens(logits_RxV, step_keys_R)
        logp_R = jnp.take_along_axis(
            jax.nn.log_softmax(logits_RxV.astype(jnp.float32)), token_R[:, None], axis=-1
        )[:, 0]
        live_R = ~state.done_R
        token_R = jnp.where(live_R, token_R, pad_id)
        col = step + max(stop_width - 1, 0)
        history_RxW = jax.lax.dynamic_update_slice(state.history_RxW, token_R[:, None], (0, col))
        hit_R = is_eos(token_R, eos_ids)
        if stop_ids_SxM is not None:
            window_RxM = jax.lax.dynamic_slice(
                history_RxW, (0, col - stop_width + 1), (rows, stop_width)
            )
            hit_R = hit_R | ends_with_stop(window_RxM, jnp.asarray(stop_ids_SxM))
        hit_R = hit_R & live_R
        return state.replace(
            step=step + 1,
            history_RxW=history_RxW,
            lengths_R=state.lengths_R + live_R.astype(jnp.int32),
            scores_R=state.scores_R + jnp.where(live_R, logp_R, 0.0),
            done_R=state.done_R | hit_R | (step + 1 >= max_new_tokens),
            stopped_R=state.stopped_R | hit_R,
        )

    def cond(state: DecodeState) -> jax.Array:
        return (state.step < max_new_tokens) & ~jnp.all(state.done_R)

    def body(state: DecodeState) -> DecodeState:
        col = state.step - 1 + max(stop_width - 1, 0)
        last_Rx1 = jax.lax.dynamic_slice(state.history_RxW, (0, col), (rows, 1))
        positions_Rx1 = (prompt_len_R + state.step - 1)[:, None]
        logits_Rx1xV, cache = tokens_to_logits(last_Rx1, positions_Rx1, state.cache)
        return select(state.replace(cache=cache), logits_Rx1xV[:, 0].astype(jnp.float32))

    # The first token comes from the prefill logits; every loop step then costs exactly one
    # model call, and none is wasted after the last token.
    state = select(state, logits_RxV)
    state = phases.while_in_phases(cond, body, state, prompt_RxT.shape[1], max_new_tokens)
    return DecodeResult(
        tokens_RxN=state.history_RxW[:, max(stop_width - 1, 0) :],
        lengths_R=state.lengths_R,
        scores_R=state.scores_R,
        stopped_R=state.stopped_R,
        cache=state.cache,
    )


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= length; beyond the largest bucket, the next multiple of it.

    Shapes are padded to buckets so that prompts of many lengths share a few compiled
    programs.
    """
    for b in sorted(buckets):
        if length <= b:
            return b
    top = max(buckets)
    return -(-length // top) * top


def pow2_buckets(minimum: int, maximum: int) -> tuple[int, ...]:
    """(minimum, 2*minimum, ..., up to and including the first >= maximum)."""
    out = [minimum]
    while out[-1] < maximum:
        out.append(out[-1] * 2)
    return tuple(out)
