"""Beam search in one `lax.while_loop`, with Hugging Face's semantics and either length penalty.

The algorithm is the one of `transformers` `GenerationMixin._beam_search` (vectorized, v4.50+),
so sequences and scores match `generate(num_beams=..., do_sample=False)`:
  * each step, all beams x vocabulary continuations are scored by their summed log-probs and
    the best K = max(2, 1 + #eos) * num_beams are kept;
  * continuations that end (eos, stop sequence, or max_new_tokens reached) leave the running
    set; if among the top num_beams they compete for the finished set with score
    sum_logprob / penalty(generated length), the eos counted;
  * the best num_beams unfinished continuations keep running;
  * a row stops once no running beam can improve its finished set (the `early_stopping`
    heuristics: True = stop when num_beams hypotheses are finished; False = stop when the best
    running beam's score at the current length cannot beat the worst finished; 'never' = with
    a positive penalty, assume the best running beam could reach max_new_tokens).
Length penalties: 'hf' = len ** alpha; 't5x' (GNMT) = ((5 + len) / 6) ** alpha.

The cache holds R = B * num_beams rows (the beams of prompt b are rows b*nb .. b*nb+nb-1). It
is reordered after each step with a gather along the row axis of the filled blocks of
`cache['blocks']` only (see `reorder_cache`), never a one-hot matmul, and not the prompt's
block (its rows are equal within a beam group); encoder-decoder
cross-attention keys and values (B rows, shared by the beams of a row) are never touched.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax.decoding import phases
from codellm_jax.decoding.loop import TokensToLogits, ends_with_stop, is_eos, prefill

_BIG = 1.0e9


@flax.struct.dataclass
class BeamResult:
    """Finished hypotheses, best first.

    Attributes:
      tokens_BxNbxN: int32 generated tokens (eos kept), `pad_id` after the end.
      scores_BxNb: float32 length-penalized scores (HF `sequences_scores`).
      lengths_BxNb: int32 generated lengths, eos included.
      cache: the final cache (see `DecodeResult.cache`).
    """

    tokens_BxNbxN: jax.Array
    scores_BxNb: jax.Array
    lengths_BxNb: jax.Array
    cache: Any


@flax.struct.dataclass
class BeamState:
    """The `lax.while_loop` carry of `beam_search`."""

    step: jax.Array  # int32[], tokens generated so far
    run_tokens_BxNbxN: jax.Array
    run_scores_BxNb: jax.Array
    fin_tokens_BxNbxN: jax.Array
    fin_scores_BxNb: jax.Array
    fin_lengths_BxNb: jax.Array
    fin_flags_BxNb: jax.Array
    improvable_B: jax.Array  # HF's is_early_stop_heuristic_unsatisfied
    parents_R: jax.Array  # cache row each running beam continues from
    cache: Any


def length_penalty_fn(alpha: float, style: str):
    """penalty(length) by which a summed log-prob is divided."""
    if style == 'hf':
        return lambda length: jnp.asarray(length, jnp.float32) ** alpha
    if style == 't5x':
        return lambda length: ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha
    raise ValueError(f"length_penalty_style={style!r}; expected 'hf' (len^a) or 't5x' (GNMT).")


def reorder_cache(cache: Any, rows_R: jax.Array, first_block: int = 0) -> Any:
    """Gathers rows of every leaf of `cache['blocks'][first_block:]` along axis 0.

    In a loop phase the cache is a view of the filled blocks (`phases`), so only those are
    reordered. Entries outside 'blocks' (an encoder-decoder's cross-attention keys) are
    shared by the beams of a row and never touched.
    """
    take = lambda x: jnp.take(x, rows_R, axis=0)
    blocks = cache['blocks']
    return {**cache, 'blocks': blocks[:first_block] + jax.tree.map(take, blocks[first_block:])}


def _gather(x_BxKx: jax.Array, idx_BxJ: jax.Array) -> jax.Array:
    """x[b, idx[b, j], ...] for each b, j."""
    idx = idx_BxJ.reshape(idx_BxJ.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.take_along_axis(x_BxKx, idx, axis=1)


def beam_search(
    tokens_to_logits: TokensToLogits,
    cache: Any,
    prompt_BxT: jax.Array,
    prompt_len_B: jax.Array,
    *,
    num_beams: int,
    max_new_tokens: int,
    eos_ids: tuple[int, ...] = (),
    stop_ids_SxM: np.ndarray | None = None,
    pad_id: int = 0,
    length_penalty: float = 1.0,
    length_penalty_style: str = 'hf',
    early_stopping: bool | str = False,
) -> BeamResult:
    """Beam search; see the module docstring for the semantics.

    Args:
      tokens_to_logits: the model callback (see `codellm_jax.decoding.loop`).
      cache: blocked KV cache with R = B * num_beams rows (see `decoding.decode`).
      prompt_BxT: int32 right-padded prompts, one per input (repeated to the beams here).
      prompt_len_B: int32 true lengths >= 1.
      num_beams, max_new_tokens, eos_ids, stop_ids_SxM, pad_id, length_penalty,
        length_penalty_style, early_stopping: static settings.

    Returns:
      `BeamResult` with all num_beams hypotheses sorted by score (take the first n).
    """
    if early_stopping not in (True, False, 'never'):
        raise ValueError(f"early_stopping={early_stopping!r}; expected True, False or 'never'.")
    batch, nb, n_new = prompt_BxT.shape[0], num_beams, max_new_tokens
    rows = batch * nb
    num_keep = max(2, 1 + len(eos_ids)) * nb
    penalty = length_penalty_fn(length_penalty, length_penalty_style)
    stop_width = 0 if stop_ids_SxM is None else stop_ids_SxM.shape[1]

    prompt_RxT = jnp.repeat(prompt_BxT, nb, axis=0)
    prompt_len_R = jnp.repeat(prompt_len_B.astype(jnp.int32), nb, axis=0)
    logits_RxV, cache = prefill(tokens_to_logits, cache, prompt_RxT, prompt_len_R)
    vocab = logits_RxV.shape[-1]
    if num_keep > nb * vocab:
        raise ValueError(f'num_beams={nb} is too large for a vocabulary of {vocab} tokens.')

    # Only beam 0 is live at first, so the first step does not pick the same token nb times.
    run_scores = jnp.where(jnp.arange(nb) == 0, 0.0, -_BIG).astype(jnp.float32)
    state = BeamState(
        step=jnp.int32(0),
        run_tokens_BxNbxN=jnp.full((batch, nb, n_new), pad_id, jnp.int32),
        run_scores_BxNb=jnp.broadcast_to(run_scores, (batch, nb)),
        fin_tokens_BxNbxN=jnp.full((batch, nb, n_new), pad_id, jnp.int32),
        fin_scores_BxNb=jnp.full((batch, nb), -_BIG, jnp.float32),
        fin_lengths_BxNb=jnp.zeros((batch, nb), jnp.int32),
        fin_flags_BxNb=jnp.zeros((batch, nb), jnp.bool_),
        improvable_B=jnp.ones((batch,), jnp.bool_),
        parents_R=jnp.arange(rows, dtype=jnp.int32),
        cache=cache,
    )
    top_nb_mask_K = jnp.arange(num_keep) < nb

    def step_fn(state: BeamState, logits_RxV: jax.Array) -> BeamState:
        step = state.step
        logp_BxNbxV = jax.nn.log_softmax(logits_RxV.astype(jnp.float32)).reshape(batch, nb, vocab)
        acc_BxNV = (logp_BxNbxV + state.run_scores_BxNb[:, :, None]).reshape(batch, nb * vocab)
        top_scores_BxK, top_idx_BxK = jax.lax.top_k(acc_BxNV, num_keep)
        parent_BxK = top_idx_BxK // vocab
        token_BxK = (top_idx_BxK % vocab).astype(jnp.int32)
        cand_BxKxN = _gather(state.run_tokens_BxNbxN, parent_BxK)
        cand_BxKxN = jax.lax.dynamic_update_slice(cand_BxKxN, token_BxK[:, :, None], (0, 0, step))

        hits_BxK = is_eos(token_BxK, eos_ids) | (step + 1 >= n_new)
        if stop_ids_SxM is not None:
            padded = jnp.pad(cand_BxKxN, ((0, 0), (0, 0), (stop_width, 0)), constant_values=-2)
            window = jax.lax.dynamic_slice(
                padded, (0, 0, step + 1), (batch, num_keep, stop_width)
            ).reshape(batch * num_keep, stop_width)
            stop_hit = ends_with_stop(window, jnp.asarray(stop_ids_SxM))
            hits_BxK = hits_BxK | stop_hit.reshape(batch, num_keep)

        # Running beams for the next step: the best unfinished continuations.
        run_lp_BxK = top_scores_BxK - _BIG * hits_BxK.astype(jnp.float32)
        _, next_BxNb = jax.lax.top_k(run_lp_BxK, nb)
        run_tokens = _gather(cand_BxKxN, next_BxNb)
        run_scores = _gather(run_lp_BxK, next_BxNb)
        parent_BxNb = _gather(parent_BxK, next_BxNb)
        parents_R = (parent_BxNb + jnp.arange(batch)[:, None] * nb).reshape(rows)

        # Finished set: merge the newly finished top-nb continuations, keep the best nb.
        just_BxK = hits_BxK & top_nb_mask_K[None]
        fin_cand_BxK = top_scores_BxK / penalty(step + 1)
        full_Bx1 = jnp.all(state.fin_flags_BxNb, axis=1, keepdims=True) & (early_stopping is True)
        fin_cand_BxK = fin_cand_BxK - _BIG * full_Bx1.astype(jnp.float32)
        fin_cand_BxK = fin_cand_BxK - _BIG * (~state.improvable_B[:, None]).astype(jnp.float32)
        fin_cand_BxK = fin_cand_BxK - _BIG * (~just_BxK).astype(jnp.float32)
        merged_scores = jnp.concatenate([state.fin_scores_BxNb, fin_cand_BxK], axis=1)
        merged_tokens = jnp.concatenate([state.fin_tokens_BxNbxN, cand_BxKxN], axis=1)
        cand_len_BxK = jnp.full((batch, num_keep), step + 1, jnp.int32)
        merged_lengths = jnp.concatenate([state.fin_lengths_BxNb, cand_len_BxK], axis=1)
        merged_flags = jnp.concatenate([state.fin_flags_BxNb, just_BxK], axis=1)
        _, keep_BxNb = jax.lax.top_k(merged_scores, nb)
        fin_scores = _gather(merged_scores, keep_BxNb)
        fin_flags = _gather(merged_flags, keep_BxNb)

        # Can the best running beam still beat the worst finished hypothesis?
        if early_stopping == 'never' and length_penalty > 0.0:
            best_len = n_new
        else:
            best_len = step + 1
        best_run_B = run_scores[:, 0] / penalty(best_len)
        worst_fin = jnp.min(fin_scores, axis=1, keepdims=True)
        worst_BxNb = jnp.where(fin_flags, worst_fin, -_BIG)
        improvable = state.improvable_B & jnp.any(best_run_B[:, None] > worst_BxNb, axis=1)
        return state.replace(
            step=step + 1,
            run_tokens_BxNbxN=run_tokens,
            run_scores_BxNb=run_scores,
            fin_tokens_BxNbxN=_gather(merged_tokens, keep_BxNb),
            fin_scores_BxNb=fin_scores,
            fin_lengths_BxNb=_gather(merged_lengths, keep_BxNb),
            fin_flags_BxNb=fin_flags,
            improvable_B=improvable,
            parents_R=parents_R,
        )

    def row_done(state: BeamState) -> jax.Array:
        full_B = jnp.all(state.fin_flags_BxNb, axis=1) & (early_stopping is True)
        return ~state.improvable_B | full_B

    def cond(state: BeamState) -> jax.Array:
        return (state.step < n_new) & ~jnp.all(row_done(state))

    # A first block that holds only the prompt is the same for every beam of a prompt (the
    # prefill repeats it), so it is never reordered.
    first_block = 1 if phases.block_sizes(cache)[0] == prompt_BxT.shape[1] else 0

    def body(state: BeamState) -> BeamState:
        cache = reorder_cache(state.cache, state.parents_R, first_block)
        last_Rx1 = jax.lax.dynamic_slice(
            state.run_tokens_BxNbxN, (0, 0, state.step - 1), (batch, nb, 1)
        ).reshape(rows, 1)
        positions_Rx1 = (prompt_len_R + state.step - 1)[:, None]
        logits_Rx1xV, cache = tokens_to_logits(last_Rx1, positions_Rx1, cache)
        return step_fn(state.replace(cache=cache), logits_Rx1xV[:, 0])

    state = step_fn(state, logits_RxV)
    state = phases.while_in_phases(cond, body, state, prompt_BxT.shape[1], n_new)
    return BeamResult(
        tokens_BxNbxN=state.fin_tokens_BxNbxN,
        scores_BxNb=state.fin_scores_BxNb,
        lengths_BxNb=state.fin_lengths_BxNb,
        cache=state.cache,
    )
