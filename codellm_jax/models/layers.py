"""Reusable transformer pieces: RMSNorm, rotary embedding, attention core, SwiGLU, remat.

Everything here is shape-generic and knows nothing of a particular model's parameter tree
beyond its own leaves. Parameters are created with logical axis names (`codellm_jax.axes`)
so that `codellm_jax.sharding` can map them onto a mesh.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax import axes
from codellm_jax.models import kv_cache
from codellm_jax.models.model_config import RopeScaling

# Large finite negative used for masked attention logits: a row whose keys are all masked
# then yields a finite (uniform) distribution instead of NaN.
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)

REMAT_POLICIES = ('none', 'full', 'dots', 'dots_no_batch')


def as_dtype(name: str | jnp.dtype) -> jnp.dtype:
    """`'float32'` / `'bfloat16'` / a dtype → a numpy dtype, with a clear error otherwise."""
    try:
        return jnp.dtype(name)
    except TypeError as e:
        raise ValueError(f'Unknown dtype {name!r}; use e.g. "float32" or "bfloat16".') from e


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean, no bias), computed in float32.

    Param 'scale' [D], logical ('embed',), initialised to ones. Output dtype is `dtype`.
    """

    eps: float = 1e-6
    dtype: jnp.dtype | str = jnp.float32
    param_dtype: jnp.dtype | str = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        scale_D = self.param(
            'scale',
            nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
            (x_BxTxD.shape[-1],),
            as_dtype(self.param_dtype),
        )
        x32 = x_BxTxD.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * jax.lax.rsqrt(var + self.eps)
        dtype = as_dtype(self.dtype)
        # Like HF Llama: normalise in f32, cast, then scale in the compute dtype.
        return y.astype(dtype) * scale_D.astype(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScaling | None = None) -> np.ndarray:
    """Inverse frequencies [Dh/2] (float32) of RoPE, with Llama-3.1 scaling when given.

    Matches HF `rope_type='llama3'`: wavelengths longer than
    `original_max_position_embeddings / low_freq_factor` are divided by `factor`, shorter
    than `... / high_freq_factor` kept, and those in between interpolated smoothly.
    """
    if head_dim % 2:
        raise ValueError(f'RoPE needs an even head_dim, got {head_dim}.')
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling is None:
        return inv_freq.astype(np.float32)
    old_len = float(scaling.original_max_position_embeddings)
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def apply_rope(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates q or k by position, HF "rotate_half" convention (halves, not interleaved).

    Computed in float32, returned in `x`'s dtype.
    """
    angles_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles_BxTx1xDh = jnp.concatenate([angles_BxTxF, angles_BxTxF], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(angles_BxTx1xDh), jnp.sin(angles_BxTx1xDh)
    x = x_BxTxNxDh.astype(jnp.float32)
    x1, x2 = jnp.split(x, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x * cos + rotated * sin).astype(x_BxTxNxDh.dtype)


def causal_segment_mask(segment_ids_BxT: jax.Array | None, batch: int, length: int) -> jax.Array:
    """Bool mask [B, T, T]: query t sees key s iff s <= t and both have equal segment ids.

    Padding (segment 0) only sees padding, so no row is ever empty.
    """
    causal_TxT = jnp.tril(jnp.ones((length, length), dtype=bool))
    if segment_ids_BxT is None:
        return jnp.broadcast_to(causal_TxT, (batch, length, length))
    same_BxTxT = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
    return same_BxTxT & causal_TxT[None]


def _gqa_groups_and_scale(h: int, k: int, dh: int, scale: float | None) -> tuple[int, float]:
    """(query heads per kv head, logit scale); raises unless H % K == 0. Scale defaults to
    1/sqrt(Dh)."""
    if h % k:
        raise ValueError(f'{h} query heads are not divisible by {k} key/value heads.')
    return h // k, dh**-0.5 if scale is None else scale


def _masked_softmax(logits: jax.Array, mask: jax.Array, scale: float) -> jax.Array:
    """float32 softmax over the last axis of `logits * scale`, masked entries excluded."""
    return jax.nn.softmax(jnp.where(mask, logits * scale, _MASK_VALUE), axis=-1)


def dot_product_attention(
    q_BxTxHxDh: jax.Array,
    k_BxSxKxDh: jax.Array,
    v_BxSxKxDh: jax.Array,
    mask_BxTxS: jax.Array,
    scale: float | None = None,
) -> jax.Array:
    """Grouped-query attention; H % K == 0 (K == 1 is MQA). Softmax in float32.

    Query head h uses kv head h // (H / K), as in HF `repeat_kv`. `scale` defaults to
    1/sqrt(Dh); pass 1.0 for T5. Returns [B, T, H, Dh] in q's dtype.
    """
    b, t, h, dh = q_BxTxHxDh.shape
    k = k_BxSxKxDh.shape[2]
    g, scale = _gqa_groups_and_scale(h, k, dh, scale)
    q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, k, g, dh)
    logits_BxKxGxTxS = jnp.einsum(
        'btkgd,bskd->bkgts', q_BxTxKxGxDh, k_BxSxKxDh, preferred_element_type=jnp.float32
    )
    probs = _masked_softmax(logits_BxKxGxTxS, mask_BxTxS[:, None, None], scale)
    probs = probs.astype(v_BxSxKxDh.dtype)
    out_BxTxKxGxDh = jnp.einsum('bkgts,bskd->btkgd', probs, v_BxSxKxDh)
    return out_BxTxKxGxDh.reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)


def causal_attention_in_chunks(
    q_BxTxHxDh: jax.Array,
    k_BxTxKxDh: jax.Array,
    v_BxTxKxDh: jax.Array,
    mask_BxTxT: jax.Array,
    chunk: int,
    scale: float | None = None,
) -> jax.Array:
    """`dot_product_attention` for a causal mask, queries in chunks of `chunk`.

    Query chunk [a, b) attends to keys [0, b) only: the mask is causal, so the keys after b
    are masked anyway. About (n + 1) / (2n) of the score FLOPs and memory for n chunks, and
    the chunks are independent, so XLA CPU runs them on different cores. q, k and v are
    made head-major once (not per chunk and per dot). The backward is hand-written
    (`_core_bwd`): it keeps only the output and the per-query log-sum-exp from the forward.
    Requires `mask_BxTxT[:, t, s]` False for s > t (the caller's promise). The last chunk
    may be shorter; chunk = 0 is a plain `dot_product_attention` call.
    """
    if chunk <= 0:
        return dot_product_attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask_BxTxT, scale)
    b, t, h, dh = q_BxTxHxDh.shape
    k = k_BxTxKxDh.shape[2]
    g, scale = _gqa_groups_and_scale(h, k, dh, scale)
    dtype = q_BxTxHxDh.dtype
    q_BxKxGxTxDh = q_BxTxHxDh.reshape(b, t, k, g, dh).transpose(0, 2, 3, 1, 4)
    k_BxKxTxDh = k_BxTxKxDh.transpose(0, 2, 1, 3).astype(dtype)
    v_BxKxTxDh = v_BxTxKxDh.transpose(0, 2, 1, 3).astype(dtype)
    out_BxKxGxTxDh = _chunked_causal_core(
        q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, chunk, scale
    )
    out_BxTxHxDh = out_BxKxGxTxDh.transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)
    return out_BxTxHxDh.astype(dtype)


def _chunk_bounds(t: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, t)) for start in range(0, t, chunk)]


def _chunk_logits(q_c, k_BxKxTxDh, mask_BxTxT, start, end, scale):
    """Masked float32 logits [B, K, G, C, E] of query chunk [start, end) over keys [0, end)."""
    logits = jnp.einsum(
        'bkgtd,bksd->bkgts', q_c, k_BxKxTxDh[:, :, :end], preferred_element_type=jnp.float32
    )
    mask = mask_BxTxT[:, None, None, start:end, :end]
    return jnp.where(mask, logits * scale, _MASK_VALUE)


def _chunked_causal_forward(q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, chunk, scale):
    """(out [B, K, G, T, Dh], float32 log-sum-exp of each query's logits [B, K, G, T])."""
    t = q_BxKxGxTxDh.shape[3]
    outs, lses = [], []
    for start, end in _chunk_bounds(t, chunk):
        logits = _chunk_logits(
            q_BxKxGxTxDh[:, :, :, start:end], k_BxKxTxDh, mask_BxTxT, start, end, scale
        )
        max_BxKxGxC = jnp.max(logits, axis=-1)
        unnorm = jnp.exp(logits - max_BxKxGxC[..., None])
        sum_BxKxGxC = jnp.sum(unnorm, axis=-1)
        v_e = v_BxKxTxDh[:, :, :end]
        out = jnp.einsum(
            'bkgts,bksd->bkgtd', unnorm.astype(v_e.dtype), v_e, preferred_element_type=jnp.float32
        )
        outs.append((out / sum_BxKxGxC[..., None]).astype(q_BxKxGxTxDh.dtype))
        lses.append(max_BxKxGxC + jnp.log(sum_BxKxGxC))
    return jnp.concatenate(outs, axis=3), jnp.concatenate(lses, axis=3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_causal_core(q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, chunk, scale):
    """Head-major chunked causal attention with a memory-lean backward (see `_core_bwd`)."""
    out, _ = _chunked_causal_forward(q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, chunk, scale)
    return out


def _core_fwd(q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, chunk, scale):
    out, lse = _chunked_causal_forward(
        q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, chunk, scale
    )
    return out, (q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, out, lse)


def _core_bwd(chunk, scale, residuals, dout_BxKxGxTxDh):
    """Softmax backward in one pass per chunk, in key-major [E, C] layout.

    P^T = exp(S^T - lse) is recomputed from q and k (nothing [T, T]-sized is kept from the
    forward) and dS^T = P^T * (V dO^T - rowsum(dO * O)): one elementwise pass for the
    softmax gradient where autodiff made several. In [E, C] layout P^T and dS^T are the
    row-major operands of dV = P^T dO and dK = dS^T Q; in [C, E] layout XLA CPU copied P
    and dS transposed and computed exp twice. dQ^T = K^T dS^T with K^T made once.
    """
    q_BxKxGxTxDh, k_BxKxTxDh, v_BxKxTxDh, mask_BxTxT, out, lse = residuals
    t = q_BxKxGxTxDh.shape[3]
    f32 = dict(preferred_element_type=jnp.float32)
    dout32 = dout_BxKxGxTxDh.astype(jnp.float32)
    delta_BxKxGxT = jnp.sum(dout32 * out.astype(jnp.float32), axis=-1)
    mask_t_BxTxT = jnp.swapaxes(mask_BxTxT, 1, 2)  # [key, query]
    k_t_BxKxDhxT = jnp.swapaxes(k_BxKxTxDh, 2, 3)
    dqs, dks, dvs = [], [], []
    for start, end in _chunk_bounds(t, chunk):
        q_c = q_BxKxGxTxDh[:, :, :, start:end]
        do_c = dout_BxKxGxTxDh[:, :, :, start:end]
        k_e, v_e = k_BxKxTxDh[:, :, :end], v_BxKxTxDh[:, :, :end]
        logits_t = jnp.einsum('bksd,bkgtd->bkgst', k_e, q_c, **f32)
        mask_t = mask_t_BxTxT[:, None, None, :end, start:end]
        logits_t = jnp.where(mask_t, logits_t * scale, _MASK_VALUE)
        probs_t = jnp.exp(logits_t - lse[:, :, :, None, start:end])
        dv = jnp.einsum('bkgst,bkgtd->bkgsd', probs_t.astype(do_c.dtype), do_c, **f32)
        dprobs_t = jnp.einsum('bksd,bkgtd->bkgst', v_e, do_c, **f32)
        dlogits_t = probs_t * (dprobs_t - delta_BxKxGxT[:, :, :, None, start:end]) * scale
        dlogits_t = dlogits_t.astype(q_c.dtype)
        dqs.append(jnp.einsum('bkds,bkgst->bkgdt', k_t_BxKxDhxT[..., :end], dlogits_t, **f32))
        dks.append(jnp.einsum('bkgst,bkgtd->bkgsd', dlogits_t, q_c, **f32).sum(2))
        dvs.append(dv.sum(2))

    def padded_sum(parts):
        return sum(jnp.pad(p, ((0, 0), (0, 0), (0, t - p.shape[2]), (0, 0))) for p in parts)

    dq = jnp.swapaxes(jnp.concatenate(dqs, axis=4), 3, 4).astype(q_BxKxGxTxDh.dtype)
    dk = padded_sum(dks).astype(k_BxKxTxDh.dtype)
    dv = padded_sum(dvs).astype(v_BxKxTxDh.dtype)
    return dq, dk, dv, None


_chunked_causal_core.defvjp(_core_fwd, _core_bwd)


def cached_attention(
    q_BxTxHxDh: jax.Array,
    blocks: Sequence[tuple[jax.Array, jax.Array, jax.Array]],
    k_BxTxKxDh: jax.Array,
    v_BxTxKxDh: jax.Array,
    positions_BxT: jax.Array,
    scale: float | None = None,
) -> jax.Array:
    """Attention of T new queries over the blocks of a KV cache, plus the new keys.

    `blocks` are (keys [B, K, S, Dh], values TRANSPOSED [B, K, Dh, S], key positions
    [B, S]) as they were before this call (`codellm_jax.models.kv_cache`): the query at
    position p sees the slots whose position is in [0, p] and the new tokens u with
    positions[b, u] in [0, p]. All parts share one float32 softmax, as if concatenated
    along S; reading the old cache lets the caller write the new k/v in place afterwards
    (`kv_cache.write`). GQA as in `dot_product_attention`.

    Values are stored transposed: XLA CPU computes both decoding dots as matrix @ vector
    with the cache as a row-major matrix contracted over its minor axis (K [S, Dh] @ q,
    V^T [Dh, S] @ p); a [S, Dh] value cache is copied transposed every step (as was a
    [Dh, S] key cache).
    Returns [B, T, H, Dh] in q's dtype.
    """
    b, t, h, dh = q_BxTxHxDh.shape
    k = k_BxTxKxDh.shape[2]
    g, scale = _gqa_groups_and_scale(h, k, dh, scale)
    dtype = q_BxTxHxDh.dtype
    q_BxTxKxGxDh = q_BxTxHxDh.reshape(b, t, k, g, dh)
    f32 = dict(preferred_element_type=jnp.float32)
    logits, widths = [], []
    for cache_k_BxKxSxDh, _, pos_BxS in blocks:
        part = jnp.einsum('btkgd,bksd->bkgts', q_BxTxKxGxDh, cache_k_BxKxSxDh.astype(dtype), **f32)
        mask_BxTxS = kv_cache.key_mask(pos_BxS, positions_BxT)
        logits.append(jnp.where(mask_BxTxS[:, None, None], part * scale, _MASK_VALUE))
        widths.append(pos_BxS.shape[1])
    new = jnp.einsum('btkgd,bukd->bkgtu', q_BxTxKxGxDh, k_BxTxKxDh.astype(dtype), **f32)
    new_mask_BxTxT = kv_cache.key_mask(positions_BxT, positions_BxT)
    logits.append(jnp.where(new_mask_BxTxT[:, None, None], new * scale, _MASK_VALUE))
    probs = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1).astype(dtype)
    out_BxTxKxGxDh = jnp.einsum(
        'bkgtu,bukd->btkgd', probs[..., sum(widths) :], v_BxTxKxDh.astype(dtype)
    )
    start = 0
    for (_, cache_v_BxKxDhxS, _), width in zip(blocks, widths, strict=True):
        out_BxTxKxGxDh = out_BxTxKxGxDh + jnp.einsum(
            'bkgts,bkds->btkgd', probs[..., start : start + width], cache_v_BxKxDhxS.astype(dtype)
        )
        start += width
    return out_BxTxKxGxDh.reshape(b, t, h, dh)


class DenseGeneral(nn.Module):
    """A bias-free einsum projection whose kernel has logical axis names.

    `features` is the output shape; the kernel is [*in_dims(axes_in), *features]. The
    matmul contracts the trailing `num_in` axes of the input.

    Decoding layout: params holding 'kernel_t' instead of 'kernel' (the same weights as one
    2-D [fan_out, fan_in] matrix, `transpose_kernel`) make the weight the left operand of
    the matmul; see `matmul_weight_lhs`.
    """

    features: tuple[int, ...]
    logical_axes: tuple[str, ...]
    num_in: int = 1
    dtype: jnp.dtype | str = jnp.float32
    param_dtype: jnp.dtype | str = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.num_in :]
        fan_in = int(np.prod(in_shape))
        fan_out = int(np.prod(self.features))
        dtype = as_dtype(self.dtype)
        lead = x.shape[: x.ndim - self.num_in]
        x_NxI = x.astype(dtype).reshape(-1, fan_in)
        if self.has_variable('params', 'kernel_t'):
            kernel_OxI = self.get_variable('params', 'kernel_t')
            if kernel_OxI.shape != (fan_out, fan_in):
                raise ValueError(
                    f'kernel_t of {self.name!r} has shape {kernel_OxI.shape}; expected '
                    f'[fan_out, fan_in] = {(fan_out, fan_in)}.'
                )
            return matmul_weight_lhs(kernel_OxI.astype(dtype), x_NxI).reshape(*lead, *self.features)

        def init(rng, shape, dtype):
            flat = self.kernel_init(rng, (fan_in, fan_out), dtype)
            return flat.reshape(shape)

        kernel = self.param(
            'kernel',
            nn.with_logical_partitioning(init, self.logical_axes),
            (*in_shape, *self.features),
            as_dtype(self.param_dtype),
        )
        # One 2-D matmul [N, fan_in] @ [fan_in, fan_out]: XLA CPU then computes the weight
        # gradient without transposed copies of the cotangent (~25% less CPU per train step
        # than a dot_general over the un-flattened axes; experiments/benchmarks/README.md).
        y_NxO = jnp.dot(x_NxI, kernel.astype(dtype).reshape(fan_in, fan_out))
        return y_NxO.reshape(*lead, *self.features)


def transpose_kernel(kernel: jax.Array, num_in: int) -> jax.Array:
    """A `DenseGeneral` kernel [*in_dims, *features] -> its 'kernel_t' [fan_out, fan_in]."""
    fan_in = int(np.prod(kernel.shape[:num_in]))
    return jnp.transpose(jnp.reshape(kernel, (fan_in, -1)))


def kernels_t(dense_by_name: dict, names: Sequence[str] | None = None) -> dict:
    """`DenseGeneral` params by name ({'kernel': ...}) -> {'kernel_t': ...}; idempotent.

    Converts the entries in `names` (default: all) and keeps the others. An attention
    output projection 'o' ([H, Dh, D]) contracts two input axes, every other kernel one.
    """
    out = dict(dense_by_name)
    for name in dense_by_name if names is None else names:
        params = dense_by_name[name]
        if 'kernel_t' not in params:
            out[name] = {'kernel_t': transpose_kernel(params['kernel'], 2 if name == 'o' else 1)}
    return out


def matmul_weight_lhs(w_OxI: jax.Array, x_NxI: jax.Array) -> jax.Array:
    """x @ w.T as (w @ x.T).T, keeping the weight the LEFT operand: returns [..., O] for
    x [..., I] (leading axes are flattened into N for the matmul).

    For the few rows of a decoding step (N = batch or beams) XLA CPU's GEMM streams a
    weight much faster as the left operand [O, I] than as the right one [I, O] (packed
    per call): a chain of the decoder's matmuls at N = 8 ran 27 vs 17 GB/s, the
    [512, 8192] output head 17.6 vs 10.4 GB/s, and no slower at N = 1..512
    (experiments/benchmarks/README.md, session 5). The barriers stop XLA's algebraic
    simplifier from folding the two transposes back into x @ w.T, its slow form.
    """
    barrier = jax.lax.optimization_barrier
    lead = x_NxI.shape[:-1]
    x_NxI = x_NxI.reshape(-1, x_NxI.shape[-1])
    return barrier(w_OxI @ barrier(x_NxI.T)).T.reshape(*lead, w_OxI.shape[0])


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); params 'gate','up' [D, F] and 'down' [F, D], no biases."""

    d_ff: int
    dtype: jnp.dtype | str = jnp.float32
    param_dtype: jnp.dtype | str = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        d = x_BxTxD.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        gate_BxTxF = DenseGeneral((self.d_ff,), (axes.EMBED, axes.MLP), name='gate', **kw)(x_BxTxD)
        up_BxTxF = DenseGeneral((self.d_ff,), (axes.EMBED, axes.MLP), name='up', **kw)(x_BxTxD)
        h_BxTxF = nn.silu(gate_BxTxF) * up_BxTxF
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, (axes.BATCH, axes.LENGTH, axes.MLP))
        return DenseGeneral((d,), (axes.MLP, axes.EMBED), name='down', **kw)(h_BxTxF)


def remat_policy(name: str) -> Callable | None:
    """The `jax.checkpoint` policy for a config name; None means save nothing ('full').

    Raises for 'none' (no remat at all: do not wrap) and unknown names.
    """
    policies = {
        'full': None,
        'dots': jax.checkpoint_policies.checkpoint_dots,
        'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if name not in policies:
        raise ValueError(f'Unknown remat_policy {name!r}; expected one of {REMAT_POLICIES}.')
    return policies[name]


def maybe_remat(module_cls: type[nn.Module], policy_name: str, static_argnums=()) -> type:
    """`nn.remat(module_cls)` with the named policy, or `module_cls` itself for 'none'."""
    if policy_name == 'none':
        return module_cls
    return nn.remat(
        module_cls,
        policy=remat_policy(policy_name),
        prevent_cse=False,
        static_argnums=static_argnums,
    )
