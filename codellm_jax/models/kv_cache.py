"""The blocked KV cache that the models' cached calls read and write.

    cache = {'blocks': (block_0, block_1, ...), 'index': int32[], ...model entries...}
    block = {'pos': int32[R, S_b], ...model leaves, each with R rows on axis 0 and S_b slots}

`pos[r, j]` is the position of the token whose keys/values sit in slot j of row r, or -1
for an empty slot. A cached call with tokens [R, T] at `positions` [R, T]:
  * READS every block: the query at position p of row r attends to the slots with
    0 <= pos[r, j] <= p, and to this call's tokens u with 0 <= positions[r, u] <= p;
  * WRITES its T keys/values and positions into slots index .. index + T - 1 of the LAST
    block, the same slots for every row (a call that does not fit there writes nothing),
    and returns the cache with index + T.
A negative position marks a padding token: its key is never attended to, and its own output
is meaningless. Slots are therefore not positions: right-padded prompts of different lengths
prefill one block (pads at position -1), and every row's next token goes to the same slot.

Both models keep one entry per layer in every block, head-major with values transposed:
{'k': [R, H, S_b, Dh], 'v': [R, H, Dh, S_b]} (`empty`, `write_layer`): for one query per row
XLA CPU reads both as row-major matrices contracted on their minor axis, in place.

Why blocks: a decoding loop passes only the blocks filled so far (a static prefix of the
tuple, one compiled loop per block), so attention reads the filled part of the cache and
beam search reorders only that part; each block is its own buffer, so no slice of a larger
cache is ever copied (XLA CPU copies a sliced dot operand). Why one write slot for all
rows: one `dynamic_update_slice` per leaf writes the whole batch in place (per-row slots
needed one update per row, or a scatter that XLA CPU turns into copies of the cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EMPTY = -1


def empty_pos(rows: int, slots: int) -> jax.Array:
    """int32[rows, slots] of `EMPTY`: a block's positions before anything is written."""
    return jnp.full((rows, slots), EMPTY, jnp.int32)


def empty(
    rows: int,
    block_sizes: int | tuple[int, ...],
    num_layers: int,
    heads: int,
    head_dim: int,
    dtype,
    max_seq_len: int,
) -> dict:
    """An empty cache, index 0: one block per entry of `block_sizes` (an int: one block),
    each {'pos': EMPTY [rows, S_b], 'layers': ({'k': [rows, H, S_b, Dh],
    'v': [rows, H, Dh, S_b]}, ...one per layer)} of zeros in `dtype`."""
    sizes = (block_sizes,) if isinstance(block_sizes, int) else tuple(block_sizes)
    if sum(sizes) > max_seq_len:
        raise ValueError(
            f'cache of {sum(sizes)} slots exceeds max_seq_len={max_seq_len}; '
            'raise model.max_seq_len or shorten prompt + generation.'
        )

    def block(s: int) -> dict:
        return {
            'pos': empty_pos(rows, s),
            'layers': tuple(
                {
                    'k': jnp.zeros((rows, heads, s, head_dim), dtype),
                    'v': jnp.zeros((rows, heads, head_dim, s), dtype),
                }
                for _ in range(num_layers)
            ),
        }

    return {'blocks': tuple(block(s) for s in sizes), 'index': jnp.zeros((), jnp.int32)}


def write_layer(
    layer: dict, k_BxTxHxDh: jax.Array, v_BxTxHxDh: jax.Array, index: jax.Array, after: jax.Array
) -> dict:
    """One layer's {'k', 'v'} of the last block with this call's keys/values written
    (token-major in, the cache's head-major layout out); see `write` for `after`."""
    return {
        'k': write(layer['k'], k_BxTxHxDh.transpose(0, 2, 1, 3), index, 2, after),
        'v': write(layer['v'], v_BxTxHxDh.transpose(0, 2, 3, 1), index, 3, after),
    }


def append(cache: dict, new_layers: tuple, positions_BxT: jax.Array, after: jax.Array) -> dict:
    """The cache after a call: the last block's layers replaced by `new_layers` (from
    `write_layer`), its positions written at `index`, and the index advanced."""
    blocks, index = cache['blocks'], cache['index']
    last = {**blocks[-1], 'layers': tuple(new_layers)}
    last['pos'] = write(last['pos'], positions_BxT, index, 1, after)
    t = positions_BxT.shape[1]
    return {**cache, 'blocks': (*blocks[:-1], last), 'index': index + t}


def key_mask(key_pos_BxS: jax.Array, query_pos_BxT: jax.Array) -> jax.Array:
    """bool[B, T, S]: query t of row b may attend to key s (0 <= key pos <= query pos)."""
    key = key_pos_BxS[:, None, :]
    return (key >= 0) & (key <= query_pos_BxT[:, :, None])


def write(
    leaf: jax.Array, new: jax.Array, index: jax.Array, slot_axis: int, after: jax.Array
) -> jax.Array:
    """`leaf` with `new` (leaf's layout, T slots on `slot_axis`) at slots index .. index + T.

    One in-place `dynamic_update_slice` for all rows. If the T slots do not fit, the slots
    are left as they were (the update is what `dynamic_update_slice`'s clamped start already
    holds). `after` must be computed from the old cache (the attention output): the write
    is made data-dependent on it (adding 0 * one element, so a NaN stays a NaN). Without
    that dependence XLA cannot order the in-place write after the reads of the old cache
    and copies the whole leaf, twice, every decoding step (XLA CPU, jax 0.10.2;
    experiments/benchmarks/README.md).
    """
    t, s = new.shape[slot_axis], leaf.shape[slot_axis]
    if t > s:
        raise ValueError(f'A call writes {t} slots into a cache block of {s} slots.')
    tie = after.reshape(-1)[0].astype(new.dtype) * 0
    new = (new + tie).astype(leaf.dtype)
    start = [jnp.zeros((), jnp.int32)] * leaf.ndim
    start[slot_axis] = jnp.asarray(index, jnp.int32)
    old = jax.lax.dynamic_slice(leaf, start, new.shape)
    fits = (index >= 0) & (index + t <= s)
    return jax.lax.dynamic_update_slice(leaf, jnp.where(fits, new, old), start)


def check(cache: dict, rows: int) -> None:
    """Raises ValueError unless `cache` has the blocked layout with `rows` rows."""
    if not isinstance(cache, dict) or 'blocks' not in cache or 'index' not in cache:
        raise ValueError(
            "The cache must be {'blocks': (block, ...), 'index': int32[]} (see "
            "codellm_jax.models.kv_cache); build it with the model's init_cache."
        )
    if not cache['blocks']:
        raise ValueError('The cache has no blocks; a cached call writes into the last block.')
    for i, block in enumerate(cache['blocks']):
        if block['pos'].shape[0] != rows:
            raise ValueError(
                f'cache block {i} has {block["pos"].shape[0]} rows but the tokens have {rows}.'
            )
