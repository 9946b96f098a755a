"""Llama-3-style decoder-only LM, with a functional API and a KV cache.

Parameter tree (layers stacked on a leading axis L whether or not they are scanned):

    {'embed': {'embedding': [V, D]},
     'layers': {'attn_norm': {'scale': [L, D]},
                'attn': {'q': {'kernel': [L, D, H, Dh]}, 'k'/'v': {'kernel': [L, D, K, Dh]},
                         'o': {'kernel': [L, H, Dh, D]}},
                'mlp_norm': {'scale': [L, D]},
                'mlp': {'gate'/'up': {'kernel': [L, D, F]}, 'down': {'kernel': [L, F, D]}}},
     'final_norm': {'scale': [D]},
     'lm_head': {'kernel': [D, V]}}   # absent when cfg.tie_embeddings

RoPE uses the HF "rotate_half" convention, so HF q/k weights import by a plain reshape.

Functional entry points (pure, jittable; `cfg` is static):
  init_params(cfg, rng) -> params
  forward(params, cfg, tokens_BxT, positions_BxT=None, segment_ids_BxT=None) -> logits_BxTxV
  init_cache(cfg, batch_size, cache_len, dtype=None) -> {'self': {'k', 'v': [L, B, S, K, Dh]}}
  forward_with_cache(params, cfg, tokens_BxT, positions_BxT, cache) -> (logits_BxTxV, cache)

Sharding: parameters carry logical axis names (see `param_logical_axes`); activations are
constrained with `nn.with_logical_constraint`, which is a no-op unless the caller traces
inside `codellm_jax.sharding.logical_rules(mesh, rules)`.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax import axes
from codellm_jax.models import layers
from codellm_jax.models.model_config import DecoderConfig

Params = dict[str, Any]
Cache = dict[str, dict[str, jax.Array]]

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)
_ACT_HEADS = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM)
_ACT_KV_HEADS = (axes.BATCH, axes.LENGTH, axes.KV_HEADS, axes.HEAD_DIM)
_CACHE_AXES = (axes.LAYERS, axes.BATCH, axes.CACHE_LENGTH, axes.KV_HEADS, axes.HEAD_DIM)


def _check_config(cfg: DecoderConfig) -> None:
    if cfg.remat_policy not in layers.REMAT_POLICIES:
        raise ValueError(
            f'Unknown remat_policy {cfg.remat_policy!r}; expected one of {layers.REMAT_POLICIES}.'
        )
    if cfg.head_dim % 2:
        raise ValueError(f'head_dim={cfg.head_dim} must be even for RoPE.')


def _write_slots(k_xBxSxKxDh, v_xBxSxKxDh, positions_BxT, new_kv):
    """Writes new k/v [(L,) B, T, K, Dh] at slots `positions[b, t]` of caches [(L,) B, S, K, Dh].

    Out-of-range slots are dropped. A leading layer axis, if present, is kept.
    """
    rows_Bx1 = jnp.arange(positions_BxT.shape[0])[:, None]
    lead = (slice(None),) * (k_xBxSxKxDh.ndim - 4)
    index = (*lead, rows_Bx1, positions_BxT)
    new_k, new_v = new_kv
    return (
        k_xBxSxKxDh.at[index].set(new_k, mode='drop'),
        v_xBxSxKxDh.at[index].set(new_v, mode='drop'),
    )


class Attention(nn.Module):
    """GQA self-attention with RoPE; optionally reads/writes one layer's KV cache."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv=None):
        cfg = self.cfg
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_BxTxHxDh = layers.DenseGeneral(
            (h, dh), (axes.EMBED, axes.HEADS, axes.HEAD_DIM), name='q', **kw
        )(x_BxTxD)
        k_BxTxKxDh = layers.DenseGeneral(
            (k, dh), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), name='k', **kw
        )(x_BxTxD)
        v_BxTxKxDh = layers.DenseGeneral(
            (k, dh), (axes.EMBED, axes.KV_HEADS, axes.HEAD_DIM), name='v', **kw
        )(x_BxTxD)
        inv_freq = layers.rope_inv_freq(dh, cfg.rope_theta, cfg.rope_scaling)
        q_BxTxHxDh = layers.apply_rope(q_BxTxHxDh, positions_BxT, inv_freq)
        k_BxTxKxDh = layers.apply_rope(k_BxTxKxDh, positions_BxT, inv_freq)
        q_BxTxHxDh = nn.with_logical_constraint(q_BxTxHxDh, _ACT_HEADS)
        k_BxTxKxDh = nn.with_logical_constraint(k_BxTxKxDh, _ACT_KV_HEADS)
        v_BxTxKxDh = nn.with_logical_constraint(v_BxTxKxDh, _ACT_KV_HEADS)

        if kv is None:
            new_kv = None
            keys, values = k_BxTxKxDh, v_BxTxKxDh
        else:
            # Attend over this layer's cache with the new k/v written at slot positions[b, t]
            # (a local copy); only the new k/v leave the layer, and `forward_with_cache`
            # scatters them into the stacked cache once, so a step never rewrites the cache.
            cache_k_BxSxKxDh, cache_v_BxSxKxDh = kv
            new_kv = (
                k_BxTxKxDh.astype(cache_k_BxSxKxDh.dtype),
                v_BxTxKxDh.astype(cache_v_BxSxKxDh.dtype),
            )
            keys, values = _write_slots(cache_k_BxSxKxDh, cache_v_BxSxKxDh, positions_BxT, new_kv)
            keys, values = keys.astype(q_BxTxHxDh.dtype), values.astype(q_BxTxHxDh.dtype)

        out_BxTxHxDh = layers.dot_product_attention(q_BxTxHxDh, keys, values, mask_BxTxS)
        out_BxTxHxDh = nn.with_logical_constraint(out_BxTxHxDh, _ACT_HEADS)
        out_BxTxD = layers.DenseGeneral(
            (cfg.d_model,), (axes.HEADS, axes.HEAD_DIM, axes.EMBED), num_in=2, name='o', **kw
        )(out_BxTxHxDh)
        return out_BxTxD, new_kv


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)). Scan-shaped signature."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv):
        cfg = self.cfg
        norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, _ACT)
        h_BxTxD = layers.RMSNorm(name='attn_norm', **norm_kw)(x_BxTxD)
        attn_BxTxD, new_kv = Attention(cfg, name='attn')(h_BxTxD, positions_BxT, mask_BxTxS, kv)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD + attn_BxTxD, _ACT)
        h_BxTxD = layers.RMSNorm(name='mlp_norm', **norm_kw)(x_BxTxD)
        mlp_BxTxD = layers.SwiGLU(
            cfg.d_ff, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name='mlp'
        )(h_BxTxD)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD + mlp_BxTxD, _ACT)
        return x_BxTxD, new_kv


class Decoder(nn.Module):
    """The whole LM. `kv` (optional) is a pair of stacked caches [L, B, S, K, Dh]."""

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, tokens_BxT, positions_BxT, mask_BxTxS, kv=None):
        cfg = self.cfg
        dtype = layers.as_dtype(cfg.dtype)
        # Tied: logits = x @ E^T, so keep E small enough that initial logits are O(1).
        emb_std = cfg.d_model**-0.5 if cfg.tie_embeddings else 1.0
        embed = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=dtype,
            param_dtype=layers.as_dtype(cfg.param_dtype),
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(stddev=emb_std), (axes.VOCAB, axes.EMBED)
            ),
            name='embed',
        )
        x_BxTxD = embed(tokens_BxT).astype(dtype)
        x_BxTxD = nn.with_logical_constraint(x_BxTxD, _ACT)

        block = layers.maybe_remat(DecoderBlock, cfg.remat_policy)
        stack = nn.scan(
            block,
            variable_axes={'params': 0},
            split_rngs={'params': True},
            in_axes=(nn.broadcast, nn.broadcast, 0),
            length=cfg.num_layers,
            unroll=1 if cfg.scan_layers else cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: axes.LAYERS},
        )
        x_BxTxD, new_kv = stack(cfg, name='layers')(x_BxTxD, positions_BxT, mask_BxTxS, kv)

        x_BxTxD = layers.RMSNorm(
            eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name='final_norm'
        )(x_BxTxD)
        if cfg.tie_embeddings:
            logits_BxTxV = embed.attend(x_BxTxD)
        else:
            logits_BxTxV = layers.DenseGeneral(
                (cfg.vocab_size,),
                (axes.EMBED, axes.VOCAB),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                name='lm_head',
            )(x_BxTxD)
        logits_BxTxV = nn.with_logical_constraint(
            logits_BxTxV.astype(jnp.float32), (axes.BATCH, axes.LENGTH, axes.VOCAB)
        )
        return logits_BxTxV, new_kv


def init_params_boxed(cfg: DecoderConfig, rng: jax.Array) -> Params:
    """Params with `nn.Partitioned` leaves (logical axis names attached): for sharded init."""
    _check_config(cfg)
    tokens_1x1 = jnp.zeros((1, 1), jnp.int32)
    mask_1x1x1 = jnp.ones((1, 1, 1), bool)
    return Decoder(cfg).init(rng, tokens_1x1, tokens_1x1, mask_1x1x1)['params']


def init_params(cfg: DecoderConfig, rng: jax.Array) -> Params:
    """Fresh parameters (plain nested dict of arrays) in `cfg.param_dtype`."""
    return nn.meta.unbox(init_params_boxed(cfg, rng))


def param_logical_axes(cfg: DecoderConfig) -> Params:
    """Tree of `PartitionSpec`s of logical axis names, shaped like the params (no allocation)."""
    boxed = jax.eval_shape(functools.partial(init_params_boxed, cfg), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def param_shapes(cfg: DecoderConfig) -> Params:
    """Tree of `jax.ShapeDtypeStruct` of the params (no allocation)."""
    return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


def num_params(cfg: DecoderConfig) -> int:
    """Total parameter count, computed abstractly."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(param_shapes(cfg))))


def forward(
    params: Params,
    cfg: DecoderConfig,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array | None = None,
    segment_ids_BxT: jax.Array | None = None,
) -> jax.Array:
    """Full causal pass. Returns float32 logits [B, T, V].

    Args:
      tokens_BxT: int token ids.
      positions_BxT: RoPE positions (default 0..T-1); packed documents restart at 0.
      segment_ids_BxT: token t attends to s iff s <= t and segment ids are equal
        (0 = padding, which then only sees padding). Default: one segment per row.
    """
    _check_config(cfg)
    b, t = tokens_BxT.shape
    if positions_BxT is None:
        positions_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask_BxTxT = layers.causal_segment_mask(segment_ids_BxT, b, t)
    logits_BxTxV, _ = Decoder(cfg).apply({'params': params}, tokens_BxT, positions_BxT, mask_BxTxT)
    return logits_BxTxV


def cache_logical_axes(cfg: DecoderConfig) -> Cache:
    """Logical axis names of every cache leaf (same tree as `init_cache`)."""
    del cfg
    spec = jax.sharding.PartitionSpec(*_CACHE_AXES)
    return {'self': {'k': spec, 'v': spec}}


def init_cache(cfg: DecoderConfig, batch_size: int, cache_len: int, dtype: Any = None) -> Cache:
    """Zeroed KV cache `{'self': {'k', 'v': [L, B, S, K, Dh]}}` (dtype default cfg.dtype)."""
    if cache_len > cfg.max_seq_len:
        raise ValueError(
            f'cache_len={cache_len} exceeds max_seq_len={cfg.max_seq_len}; '
            'raise model.max_seq_len or shorten prompt + generation.'
        )
    dtype = layers.as_dtype(dtype or cfg.dtype)
    shape = (cfg.num_layers, batch_size, cache_len, cfg.num_kv_heads, cfg.head_dim)
    return {'self': {'k': jnp.zeros(shape, dtype), 'v': jnp.zeros(shape, dtype)}}


def forward_with_cache(
    params: Params,
    cfg: DecoderConfig,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: Cache,
) -> tuple[jax.Array, Cache]:
    """Prefill or decode step. Returns (float32 logits [B, T, V], updated cache).

    The k/v of token t of row b go to cache slot `positions_BxT[b, t]`; a query at position
    p attends to slots j <= p. Positions in one call must be contiguous per row
    (start_b + t), so right-padded prompts of different lengths prefill in one call and
    row b then continues at position len_b (overwriting the slot a pad wrote). Writes to
    slots >= cache_len are dropped, so keep positions below `cache_len`.
    """
    _check_config(cfg)
    k_LxBxSxKxDh, v_LxBxSxKxDh = cache['self']['k'], cache['self']['v']
    b, t = tokens_BxT.shape
    if positions_BxT.shape != (b, t):
        raise ValueError(f'positions shape {positions_BxT.shape} != tokens shape {(b, t)}.')
    if k_LxBxSxKxDh.shape[1] != b:
        raise ValueError(f'cache batch {k_LxBxSxKxDh.shape[1]} != tokens batch {b}.')
    mask_BxTxS = layers.cache_mask(positions_BxT, k_LxBxSxKxDh.shape[2])
    logits_BxTxV, new_kv_LxBxTxKxDh = Decoder(cfg).apply(
        {'params': params}, tokens_BxT, positions_BxT, mask_BxTxS, (k_LxBxSxKxDh, v_LxBxSxKxDh)
    )
    new_k, new_v = _write_slots(k_LxBxSxKxDh, v_LxBxSxKxDh, positions_BxT, new_kv_LxBxTxKxDh)
    return logits_BxTxV, {'self': {'k': new_k, 'v': new_v}}
