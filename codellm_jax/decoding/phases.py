"""A decoding `lax.while_loop` in phases, one per block of the KV cache.

The cache is blocked (`codellm_jax.models.kv_cache`, which this package reads only through
the keys 'blocks', 'pos' and 'index'): a tuple of separate buffers that together hold the
slots 0, 1, 2, ... in order. The prompt fills slots 0 .. T-1 (T = the padded prompt width,
inside block 0) and the token fed at decoding step s (s >= 1: the token generated s - 1
steps after the first) goes to slot T + s - 1, the same slot for every row.

Phase j runs the steps whose slot lies in block j, with a cache VIEW of blocks 0 .. j only:
attention reads the filled blocks and not the empty ones after them, and beam search
reorders only those. Each phase is its own `lax.while_loop` (a static block count per
compiled loop), so a cache in P blocks compiles the step P times; the blocks are separate
buffers, so a view costs no copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Cache = Any


@dataclasses.dataclass(frozen=True)
class Phase:
    """Steps first_step <= s < end_step write into block `num_blocks - 1` at slot offset
    T + s - 1 - block_start."""

    num_blocks: int
    first_step: int
    end_step: int
    block_start: int


def cache_blocks(prompt_width: int, max_new_tokens: int, block: int) -> tuple[int, ...]:
    """Block sizes for a prompt of `prompt_width` and `max_new_tokens`: the prompt's block,
    then blocks of `block` slots (the last one shorter) for the max_new_tokens - 1 tokens fed
    back; `block` <= 0: everything in one block."""
    fed = max_new_tokens - 1
    if block <= 0:
        return (prompt_width + fed,)
    return (prompt_width,) + tuple(min(block, fed - i) for i in range(0, fed, block))


def block_sizes(cache: Cache) -> tuple[int, ...]:
    """Slots per block (static)."""
    return tuple(int(block['pos'].shape[1]) for block in cache['blocks'])


def plan(sizes: tuple[int, ...], prompt_width: int, max_new_tokens: int) -> list[Phase]:
    """The phases of a loop that feeds tokens for steps 1 .. max_new_tokens - 1.

    Raises ValueError if the prompt does not fit block 0 or the blocks hold fewer than
    prompt_width + max_new_tokens - 1 slots.
    """
    if not sizes or sizes[0] < prompt_width:
        raise ValueError(
            f'The prompt ({prompt_width} tokens) must fit the first cache block (blocks {sizes}).'
        )
    need = prompt_width + max_new_tokens - 1
    if sum(sizes) < need:
        raise ValueError(
            f'The cache holds {sum(sizes)} slots (blocks {sizes}); a prompt of {prompt_width} '
            f'and {max_new_tokens} new tokens need {need}.'
        )
    phases, start = [], 0
    for j, size in enumerate(sizes):
        end = start + size
        first = max(start, prompt_width) - prompt_width + 1
        last = min(end - prompt_width + 1, max_new_tokens)
        if first < last:
            phases.append(Phase(j + 1, first, last, start))
        start = end
    return phases


def view(cache: Cache, num_blocks: int, index: jax.Array | int) -> Cache:
    """The cache as a model call should see it: blocks 0 .. num_blocks-1, writing at index."""
    return {**cache, 'blocks': cache['blocks'][:num_blocks], 'index': jnp.asarray(index, jnp.int32)}


def merge(cache: Cache, updated_view: Cache) -> Cache:
    """`cache` with the blocks (and other entries) of a view written back."""
    n = len(updated_view['blocks'])
    return {**updated_view, 'blocks': updated_view['blocks'] + cache['blocks'][n:]}


def prefill_positions(prompt_len_R: jax.Array, width: int) -> jax.Array:
    """int32[R, width]: 0 .. len_r - 1, then -1 (padding, never attended to)."""
    t_1xT = jnp.arange(width, dtype=jnp.int32)[None]
    return jnp.where(t_1xT < prompt_len_R[:, None], t_1xT, -1)


def while_in_phases(
    cond: Callable[[Any], jax.Array],
    body: Callable[[Any], Any],
    state: Any,
    prompt_width: int,
    max_new_tokens: int,
) -> Any:
    """`lax.while_loop(cond, body, state)` run phase by phase over `state.cache`'s blocks.

    `state` is a flax struct with `step` (int32[], the next step) and `cache` (the whole
    blocked cache, on entry and on exit); inside a phase, `body` sees the phase's view.
    """
    full = state.cache
    for phase in plan(block_sizes(full), prompt_width, max_new_tokens):
        index = prompt_width + state.step - 1 - phase.block_start
        state = state.replace(cache=view(full, phase.num_blocks, index))
        end = phase.end_step
        state = jax.lax.while_loop(lambda s, end=end: cond(s) & (s.step < end), body, state)
        full = merge(full, state.cache)
        state = state.replace(cache=full)
    return state
