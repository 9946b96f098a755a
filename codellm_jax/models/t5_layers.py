"""T5-specific pieces: relative position buckets and bias, unscaled attention, T5 FFNs,
and the encoder/decoder blocks built from them.

Shared, model-agnostic pieces (RMSNorm, DenseGeneral, remat) live in `layers.py`; what is
here follows Hugging Face `transformers.models.t5.modeling_t5` so that HF weights import
by reshape and outputs match.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax import axes
from codellm_jax.models.layers import DenseGeneral, RMSNorm, as_dtype
from codellm_jax.models.model_config import EncoderDecoderConfig

# Large finite negative for masked logits: an all-masked row stays finite (uniform).
_MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
_ACT_HEADS = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM)


def relative_position_bucket(
    relative_position: jax.Array,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
    """T5's bucket (int32, in [0, num_buckets)) of `relative_position = key_pos - query_pos`.

    Same arithmetic as HF `T5Attention._relative_position_bucket`: half the buckets hold
    exact small distances, the other half logarithmically larger ones up to `max_distance`
    (everything beyond shares the last bucket). Bidirectional: separate buckets for keys
    after the query (positive offsets); unidirectional: keys after the query map to 0.
    """
    rel = jnp.asarray(relative_position).astype(jnp.int32)
    buckets = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).astype(jnp.int32) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    # log(0) for rel == 0 is masked by is_small; the division keeps f32 like torch does.
    rel_f = jnp.maximum(rel, 1).astype(jnp.float32)
    scaled = (
        jnp.log(rel_f / max_exact)
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(num_buckets - max_exact)
    )
    if_large = max_exact + scaled.astype(jnp.int32)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(is_small, rel, if_large)


class RelativePositionBias(nn.Module):
    """T5's learned attention bias by bucketed relative position, shared by a whole stack.

    Param 'embedding' [num_buckets, H], logical ('rel_buckets', 'heads'). Returns a float32
    bias [B, H, T, S] for query positions [B, T] and key positions [B, S] (B may be 1).
    """

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool
    embedding_std: float = 1.0
    param_dtype: str = 'float32'

    @nn.compact
    def __call__(self, q_positions_BxT: jax.Array, k_positions_BxS: jax.Array) -> jax.Array:
        table_NxH = self.param(
            'embedding',
            nn.with_logical_partitioning(
                nn.initializers.normal(self.embedding_std), (axes.REL_BUCKETS, axes.HEADS)
            ),
            (self.num_buckets, self.num_heads),
            as_dtype(self.param_dtype),
        )
        rel_BxTxS = k_positions_BxS[:, None, :] - q_positions_BxT[:, :, None]
        bucket_BxTxS = relative_position_bucket(
            rel_BxTxS, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias_BxTxSxH = jnp.take(table_NxH.astype(jnp.float32), bucket_BxTxS, axis=0)
        return jnp.transpose(bias_BxTxSxH, (0, 3, 1, 2))


def t5_attention(q_BxTxHxK: jax.Array, parts) -> jax.Array:
    """Unscaled (T5) multi-head attention with additive bias; softmax in float32.

    `parts` is a sequence of key blocks `(k, v, bias, mask)` or `(k, v, bias, mask,
    head_major)` sharing one softmax, as if concatenated along S (a KV cache plus this
    call's new keys without copying the cache). k and v are [b, S, H, Dh], or with
    `head_major` the cache layout k [b, H, S, Dh], v [b, H, Dh, S]: for one query per row
    XLA CPU then reads both as row-major matrices contracted on their minor axis (the
    token-major layout is copied transposed for every call). Queries may have n times the
    batch of a block (B = n*b): query row i attends to key row i // n, so beams/samples of
    one input share its encoder k/v without a copy. `bias` (or None) broadcasts to
    [B, H, T, S]; `mask` (True = attend) to [B, T, S]. Returns [B, T, H, Dh] in q's dtype.
    """
    bq, t, h, dk = q_BxTxHxK.shape
    dtype = q_BxTxHxK.dtype
    logits, groups = [], []
    for k_, _, bias_BxHxTxS, mask_BxTxS, *layout in parts:
        head_major = bool(layout and layout[0])
        b, s = k_.shape[0], k_.shape[2 if head_major else 1]
        if bq % b:
            raise ValueError(
                f'Query batch {bq} is not a multiple of key/value batch {b}; decoder rows '
                'must be n copies (adjacent) of each encoder row.'
            )
        spec = 'bnthk,bhsk->bnhts' if head_major else 'bnthk,bshk->bnhts'
        q_bxNxTxHxK = q_BxTxHxK.reshape(b, bq // b, t, h, dk)
        logits_bxNxHxTxS = jnp.einsum(
            spec, q_bxNxTxHxK, k_.astype(dtype), preferred_element_type=jnp.float32
        )
        logits_BxHxTxS = logits_bxNxHxTxS.reshape(bq, h, t, s)
        if bias_BxHxTxS is not None:
            logits_BxHxTxS = logits_BxHxTxS + bias_BxHxTxS
        logits.append(jnp.where(mask_BxTxS[:, None], logits_BxHxTxS, _MASK_VALUE))
        groups.append((b, s, head_major))
    probs_BxHxTxS = jax.nn.softmax(jnp.concatenate(logits, axis=-1), axis=-1)
    out_BxTxHxK = 0.0
    start = 0
    for part, (b, s, head_major) in zip(parts, groups, strict=True):
        p_bxNxHxTxS = probs_BxHxTxS[..., start : start + s].reshape(b, bq // b, h, t, s)
        start += s
        v_ = part[1].astype(dtype)
        spec = 'bnhts,bhks->bnthk' if head_major else 'bnhts,bshk->bnthk'
        out = jnp.einsum(spec, p_bxNxHxTxS.astype(dtype), v_)
        out_BxTxHxK = out_BxTxHxK + out.reshape(bq, t, h, dk)
    return out_BxTxHxK.astype(dtype)


class T5Attention(nn.Module):
    """Projections of T5 attention: 'q','k','v' [D, H, Dh] and 'o' [H, Dh, D], no biases.

    `kv(x)` projects keys/values (so caches can hold them); `__call__` projects queries,
    attends to the given key blocks and projects out. Initialised like HF T5 (factor 1.0).
    """

    d_model: int
    num_heads: int
    head_dim: int
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    def setup(self):
        hd = (self.num_heads, self.head_dim)
        in_axes = (axes.EMBED, axes.HEADS, axes.HEAD_DIM)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        kv_init = nn.initializers.normal(self.d_model**-0.5)
        self.q = DenseGeneral(
            hd,
            in_axes,
            kernel_init=nn.initializers.normal((self.d_model * self.head_dim) ** -0.5),
            **kw,
        )
        self.k = DenseGeneral(hd, in_axes, kernel_init=kv_init, **kw)
        self.v = DenseGeneral(hd, in_axes, kernel_init=kv_init, **kw)
        self.o = DenseGeneral(
            (self.d_model,),
            (axes.HEADS, axes.HEAD_DIM, axes.EMBED),
            num_in=2,
            kernel_init=nn.initializers.normal((self.num_heads * self.head_dim) ** -0.5),
            **kw,
        )

    def kv(self, x_BxSxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [B, S, H, Dh] in the compute dtype."""
        k_BxSxHxK = nn.with_logical_constraint(self.k(x_BxSxD), _ACT_HEADS)
        v_BxSxHxK = nn.with_logical_constraint(self.v(x_BxSxD), _ACT_HEADS)
        return k_BxSxHxK, v_BxSxHxK

    def __call__(self, x_BxTxD: jax.Array, parts) -> jax.Array:
        """Attends queries from `x` [B, T, D] to key blocks `parts` (see `t5_attention`)."""
        q_BxTxHxK = nn.with_logical_constraint(self.q(x_BxTxD), _ACT_HEADS)
        out_BxTxHxK = t5_attention(q_BxTxHxK, parts)
        return self.o(nn.with_logical_constraint(out_BxTxHxK, _ACT_HEADS))


class T5MLP(nn.Module):
    """T5 FFN: 'relu' = wo(relu(wi x)); 'gated-gelu' = wo(gelu_tanh(wi_0 x) * wi_1 x)."""

    d_ff: int
    feed_forward: str = 'relu'
    dtype: str = 'float32'
    param_dtype: str = 'float32'

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        d = x_BxTxD.shape[-1]

        def dense(name, features, logical_axes, std):
            return DenseGeneral(
                features,
                logical_axes,
                dtype=self.dtype,
                param_dtype=self.param_dtype,
                kernel_init=nn.initializers.normal(std),
                name=name,
            )

        in_axes = (axes.EMBED, axes.MLP)
        if self.feed_forward == 'relu':
            h_BxTxF = nn.relu(dense('wi', (self.d_ff,), in_axes, d**-0.5)(x_BxTxD))
        elif self.feed_forward == 'gated-gelu':
            gate_BxTxF = dense('wi_0', (self.d_ff,), in_axes, d**-0.5)(x_BxTxD)
            lin_BxTxF = dense('wi_1', (self.d_ff,), in_axes, d**-0.5)(x_BxTxD)
            h_BxTxF = nn.gelu(gate_BxTxF, approximate=True) * lin_BxTxF
        else:
            raise ValueError(
                f"feed_forward={self.feed_forward!r}; expected 'relu' or 'gated-gelu'."
            )
        h_BxTxF = nn.with_logical_constraint(h_BxTxF, (axes.BATCH, axes.LENGTH, axes.MLP))
        return dense('wo', (d,), (axes.MLP, axes.EMBED), self.d_ff**-0.5)(h_BxTxF)


_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


def norm(cfg: EncoderDecoderConfig, name: str) -> RMSNorm:
    return RMSNorm(cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)


def _attention(cfg: EncoderDecoderConfig, name: str) -> T5Attention:
    return T5Attention(
        cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.dtype, cfg.param_dtype, name=name
    )


def _mlp(cfg: EncoderDecoderConfig) -> T5MLP:
    return T5MLP(cfg.d_ff, cfg.feed_forward, cfg.dtype, cfg.param_dtype, name='mlp')


class EncoderLayer(nn.Module):
    """Pre-norm T5 encoder block; `(x, None)` for `nn.scan`."""

    cfg: EncoderDecoderConfig

    @nn.compact
    def __call__(self, x_BxSxD, bias_1xHxSxS, mask_BxSxS):
        x_BxSxD = nn.with_logical_constraint(x_BxSxD, _ACT)
        h_BxSxD = norm(self.cfg, 'attn_norm')(x_BxSxD)
        attn = _attention(self.cfg, 'attn')
        k, v = attn.kv(h_BxSxD)
        x_BxSxD = x_BxSxD + attn(h_BxSxD, [(k, v, bias_1xHxSxS, mask_BxSxS)])
        h_BxSxD = norm(self.cfg, 'mlp_norm')(x_BxSxD)
        x_BxSxD = x_BxSxD + _mlp(self.cfg)(h_BxSxD)
        return nn.with_logical_constraint(x_BxSxD, _ACT), None


class DecoderLayer(nn.Module):
    """Pre-norm T5 decoder block; `(x, new self k/v | None)` for `nn.scan`.

    `self_args` holds (bias, mask) per self-attention key block: one block (this call's
    keys) without a cache; with this layer's cache `{'k','v': tuples of blocks, 'cross_k',
    'cross_v'}` (head-major: k [B', H, S_i, Dh], v [B', H, Dh, S_i], cross likewise with B
    rows, see `t5_attention`) one per cache block, as it was, then the new keys. The cache is only read here: the caller writes the returned new
    k/v [B', T, H, Dh] into it once for all layers. Cross k/v come from the cache, or are
    projected from `encoded` without one.
    """

    cfg: EncoderDecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, self_args, encoded_bxSxD, cross_mask, cache):
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, _ACT)
        h_BxTxD = norm(self.cfg, 'self_attn_norm')(x_BxTxD)
        self_attn = _attention(self.cfg, 'self_attn')
        k, v = self_attn.kv(h_BxTxD)
        if cache is None:
            new_kv = None
            parts = [(k, v, *self_args[0])]
        else:
            # Round through the cache dtype so this call sees what later calls will read.
            dtype = cache['k'][0].dtype
            new_kv = {'k': k.astype(dtype), 'v': v.astype(dtype)}
            blocks = zip(cache['k'], cache['v'], self_args[:-1], strict=True)
            parts = [(ck, cv, *args, True) for ck, cv, args in blocks]
            parts.append((new_kv['k'], new_kv['v'], *self_args[-1]))
        x_BxTxD = x_BxTxD + self_attn(h_BxTxD, parts)

        h_BxTxD = norm(self.cfg, 'cross_attn_norm')(x_BxTxD)
        cross_attn = _attention(self.cfg, 'cross_attn')
        if cache is not None:
            ck, cv = cache['cross_k'], cache['cross_v']
        else:
            ck, cv = cross_attn.kv(encoded_bxSxD)
        x_BxTxD = x_BxTxD + cross_attn(h_BxTxD, [(ck, cv, None, cross_mask, cache is not None)])

        h_BxTxD = norm(self.cfg, 'mlp_norm')(x_BxTxD)
        x_BxTxD = x_BxTxD + _mlp(self.cfg)(h_BxTxD)
        return nn.with_logical_constraint(x_BxTxD, _ACT), new_kv
