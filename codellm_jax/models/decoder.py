"""Llama-3-style decoder-only LM, with a functional API and a KV cache.

Parameter tree ("stacked" layout: layers on a leading axis L whether or not they are scanned):

    {'embed': {'embedding': [V, D]},
     'layers': {'attn_norm': {'scale': [L, D]},
                'attn': {'q': {'kernel': [L, D, H, Dh]}, 'k'/'v': {'kernel': [L, D, K, Dh]},
                         'o': {'kernel': [L, H, Dh, D]}},
                'mlp_norm': {'scale': [L, D]},
                'mlp': {'gate'/'up': {'kernel': [L, D, F]}, 'down': {'kernel': [L, F, D]}}},
     'final_norm': {'scale': [D]},
     'lm_head': {'kernel': [D, V]}}   # absent when cfg.tie_embeddings

The "per-layer" layout (`unstack_layers`) replaces 'layers' by 'layers_0' .. 'layers_{L-1}',
each holding one layer's leaves without the L axis. Training and checkpoints use the stacked
layout; cached decoding runs the layers one by one and wants separate buffers per layer (a
slice of a stacked weight is a copy on XLA CPU, every step), so the generator converts once.

RoPE uses the HF "rotate_half" convention, so HF q/k weights import by a plain reshape.

Functional entry points (pure, jittable; `cfg` is static):
  init_params(cfg, rng) -> params
  forward(params, cfg, tokens_BxT, positions_BxT=None, segment_ids_BxT=None) -> logits_BxTxV
  unstack_layers(params) / stack_layers(params): stacked <-> per-layer layout
  init_cache(cfg, batch_size, cache_len, dtype=None)
      -> {'self': ({'k': [B, K, S, Dh], 'v': [B, K, Dh, S]}, ...)}  (one dict per layer)
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
_CACHE_K_AXES = (axes.BATCH, axes.KV_HEADS, axes.CACHE_LENGTH, axes.HEAD_DIM)
_CACHE_V_AXES = (axes.BATCH, axes.KV_HEADS, axes.HEAD_DIM, axes.CACHE_LENGTH)
_LAYER_PREFIX = 'layers_'


def _check_config(cfg: DecoderConfig) -> None:
    if cfg.remat_policy not in layers.REMAT_POLICIES:
        raise ValueError(
            f'Unknown remat_policy {cfg.remat_policy!r}; expected one of {layers.REMAT_POLICIES}.'
        )
    if cfg.head_dim % 2:
        raise ValueError(f'head_dim={cfg.head_dim} must be even for RoPE.')


class Attention(nn.Module):
    """GQA self-attention with RoPE; optionally reads/writes one layer's KV cache.

    With `kv` = {'k': [B, K, S, Dh], 'v': [B, K, Dh, S]} the mask is unused (see
    `layers.cached_attention`) and the updated cache is returned; without it, (output, None).
    """

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
            # The decoder's masks are causal (causal_segment_mask), as chunking requires.
            out_BxTxHxDh = layers.causal_attention_in_chunks(
                q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask_BxTxS, cfg.attention_chunk
            )
        else:
            # Read the old cache plus the new k/v, then write the new k/v in place.
            out_BxTxHxDh = layers.cached_attention(
                q_BxTxHxDh, kv['k'], kv['v'], k_BxTxKxDh, v_BxTxKxDh, positions_BxT
            )
            start_B = positions_BxT[:, 0]
            new_kv = {
                'k': layers.write_cache_slots(
                    kv['k'], k_BxTxKxDh.transpose(0, 2, 1, 3), start_B, 2, out_BxTxHxDh
                ),
                'v': layers.write_cache_slots(
                    kv['v'], v_BxTxKxDh.transpose(0, 2, 3, 1), start_B, 3, out_BxTxHxDh
                ),
            }
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
    """The whole LM.

    Without `kv`, the layers are one scanned (or unrolled) stack with stacked params. With
    `kv`, a tuple of per-layer caches {'k': [B, K, S, Dh], 'v': [B, K, Dh, S]}, the layers run one by one
    from per-layer params ('layers_0', ...) and the updated caches are returned.
    """

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

        if kv is None:
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
            x_BxTxD, new_kv = stack(cfg, name='layers')(x_BxTxD, positions_BxT, mask_BxTxS, None)
        else:
            new_kv = []
            for i, layer_kv in enumerate(kv):
                x_BxTxD, layer_kv = DecoderBlock(cfg, name=f'{_LAYER_PREFIX}{i}')(
                    x_BxTxD, positions_BxT, None, layer_kv
                )
                new_kv.append(layer_kv)
            new_kv = tuple(new_kv)

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


def unstack_layers(params: Params, num_layers: int | None = None) -> Params:
    """Stacked layout ('layers' leaves [L, ...]) -> per-layer ('layers_i' leaves [...]).

    Works on any tree shaped like the params: arrays, `ShapeDtypeStruct`s, or
    `PartitionSpec`s of logical axes (then pass `num_layers`). A tree already per-layer is
    returned as is.
    """
    if 'layers' not in params:
        return params
    stacked = params['layers']
    if num_layers is None:
        num_layers = _stacked_length(stacked)
    out = {k: v for k, v in params.items() if k != 'layers'}
    for i in range(num_layers):
        out[f'{_LAYER_PREFIX}{i}'] = jax.tree.map(
            functools.partial(_layer_slice, i), stacked, is_leaf=_is_spec
        )
    return out


def stack_layers(params: Params) -> Params:
    """Per-layer layout -> stacked layout (inverse of `unstack_layers`; arrays only)."""
    names = sorted(
        (k for k in params if k.startswith(_LAYER_PREFIX)),
        key=lambda k: int(k[len(_LAYER_PREFIX) :]),
    )
    if not names:
        return params
    out = {k: v for k, v in params.items() if not k.startswith(_LAYER_PREFIX)}
    out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in names))
    return out


def _is_spec(x: Any) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec)


def _stacked_length(stacked: Params) -> int:
    leaf = jax.tree.leaves(stacked, is_leaf=_is_spec)[0]
    if _is_spec(leaf):
        raise ValueError('unstack_layers got PartitionSpecs only: pass num_layers.')
    return leaf.shape[0]


def _layer_slice(i: int, x: Any) -> Any:
    if _is_spec(x):
        return jax.sharding.PartitionSpec(*x[1:])
    if isinstance(x, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def cache_logical_axes(cfg: DecoderConfig) -> Cache:
    """Logical axis names of every cache leaf (same tree as `init_cache`)."""
    k_spec = jax.sharding.PartitionSpec(*_CACHE_K_AXES)
    v_spec = jax.sharding.PartitionSpec(*_CACHE_V_AXES)
    return {'self': tuple({'k': k_spec, 'v': v_spec} for _ in range(cfg.num_layers))}


def init_cache(cfg: DecoderConfig, batch_size: int, cache_len: int, dtype: Any = None) -> Cache:
    """Zeroed KV cache {'self': ({'k': [B, K, S, Dh], 'v': [B, K, Dh, S]}, ...)}, one per layer.

    Batch-major per-layer leaves: a decoding step updates each in place and beam search
    reorders them along axis 0. Values are stored transposed (see `layers.cached_attention`).
    dtype defaults to cfg.dtype.
    """
    if cache_len > cfg.max_seq_len:
        raise ValueError(
            f'cache_len={cache_len} exceeds max_seq_len={cfg.max_seq_len}; '
            'raise model.max_seq_len or shorten prompt + generation.'
        )
    dtype = layers.as_dtype(dtype or cfg.dtype)
    k_shape = (batch_size, cfg.num_kv_heads, cache_len, cfg.head_dim)
    v_shape = (batch_size, cfg.num_kv_heads, cfg.head_dim, cache_len)
    return {
        'self': tuple(
            {'k': jnp.zeros(k_shape, dtype), 'v': jnp.zeros(v_shape, dtype)}
            for _ in range(cfg.num_layers)
        )
    }


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

    `params` may be in either layout; pass the per-layer one (`unstack_layers`, once) when
    calling this in a loop, or every call slices (copies) the stacked weights.
    """
    _check_config(cfg)
    layer_caches = cache['self']
    b, t = tokens_BxT.shape
    if positions_BxT.shape != (b, t):
        raise ValueError(f'positions shape {positions_BxT.shape} != tokens shape {(b, t)}.')
    if len(layer_caches) != cfg.num_layers:
        raise ValueError(f'cache has {len(layer_caches)} layers, the model {cfg.num_layers}.')
    if layer_caches[0]['k'].shape[0] != b:
        raise ValueError(f'cache batch {layer_caches[0]["k"].shape[0]} != tokens batch {b}.')
    logits_BxTxV, new_caches = Decoder(cfg).apply(
        {'params': unstack_layers(params)}, tokens_BxT, positions_BxT, None, tuple(layer_caches)
    )
    return logits_BxTxV, {'self': new_caches}
