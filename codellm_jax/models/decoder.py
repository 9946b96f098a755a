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
The "decoding" layout (`decode_layout`) is the per-layer one with every projection kernel
stored transposed, {'kernel_t': [fan_out, fan_in]} (e.g. q: [H*Dh, D], o: [D, H*Dh],
lm_head: [V, D]), so that each matmul of a decoding step has the weight as its left
operand (`layers.matmul_weight_lhs`: 8-12% shorter decoding steps on XLA CPU at 1-8 rows);
optionally with each layer's q, k, v kernels fused into one 'qkv' (a further 5-11% at 1 row).

RoPE uses the HF "rotate_half" convention, so HF q/k weights import by a plain reshape.

Functional entry points (pure, jittable; `cfg` is static):
  init_params(cfg, rng) -> params
  forward(params, cfg, tokens_BxT, positions_BxT=None, segment_ids_BxT=None) -> logits_BxTxV
  unstack_layers(params) / stack_layers(params): stacked <-> per-layer layout
  decode_layout(params, fuse_qkv=False): any layout -> the decoding layout (for
      `forward_with_cache`; fused q/k/v optional)
  init_cache(cfg, batch_size, block_sizes, dtype=None)
      -> {'blocks': ({'pos': [B, S], 'layers': ({'k': [B, K, S, Dh], 'v': [B, K, Dh, S]},
                                                ...one per layer)}, ...), 'index': int32[]}
  forward_with_cache(params, cfg, tokens_BxT, positions_BxT, cache) -> (logits_BxTxV, cache)
      (the blocked-cache contract of `codellm_jax.models.kv_cache`)

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
from codellm_jax.models import kv_cache, layers
from codellm_jax.models.model_config import DecoderConfig

Params = dict[str, Any]
Cache = dict[str, Any]

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)
_ACT_HEADS = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.HEAD_DIM)
_ACT_KV_HEADS = (axes.BATCH, axes.LENGTH, axes.KV_HEADS, axes.HEAD_DIM)
_CACHE_K_AXES = (axes.BATCH, axes.KV_HEADS, axes.CACHE_LENGTH, axes.HEAD_DIM)
_CACHE_V_AXES = (axes.BATCH, axes.KV_HEADS, axes.HEAD_DIM, axes.CACHE_LENGTH)
LAYER_PREFIX = 'layers_'


def _check_config(cfg: DecoderConfig) -> None:
    if cfg.remat_policy not in layers.REMAT_POLICIES:
        raise ValueError(
            f'Unknown remat_policy {cfg.remat_policy!r}; expected one of {layers.REMAT_POLICIES}.'
        )
    if cfg.head_dim % 2:
        raise ValueError(f'head_dim={cfg.head_dim} must be even for RoPE.')


class Attention(nn.Module):
    """GQA self-attention with RoPE; optionally reads/writes one layer's KV cache.

    With `kv` = (this layer's blocks ((k [B, K, S, Dh], v [B, K, Dh, S], pos [B, S]), ...),
    write index) the mask is unused (see `layers.cached_attention`) and the last block's
    updated {'k', 'v'} are returned; without it, (output, None).
    """

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, positions_BxT, mask_BxTxS, kv=None):
        cfg = self.cfg
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        h, k, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        if self.has_variable('params', 'qkv'):
            # Decoding layout with q, k, v fused (`decode_layout(fuse_qkv=True)`); never
            # initialised, so its logical axes are unused.
            b, t, _ = x_BxTxD.shape
            qkv_BxTxN = layers.DenseGeneral(
                ((h + 2 * k) * dh,), (axes.EMBED, axes.HEADS), name='qkv', **kw
            )(x_BxTxD)
            q_BxTxHxDh = qkv_BxTxN[..., : h * dh].reshape(b, t, h, dh)
            k_BxTxKxDh = qkv_BxTxN[..., h * dh : (h + k) * dh].reshape(b, t, k, dh)
            v_BxTxKxDh = qkv_BxTxN[..., (h + k) * dh :].reshape(b, t, k, dh)
        else:
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
            # Read the old blocks plus the new k/v, then write the new k/v in place.
            layer_blocks, index = kv
            out_BxTxHxDh = layers.cached_attention(
                q_BxTxHxDh, layer_blocks, k_BxTxKxDh, v_BxTxKxDh, positions_BxT
            )
            last_k, last_v, _ = layer_blocks[-1]
            new_kv = kv_cache.write_layer(
                {'k': last_k, 'v': last_v}, k_BxTxKxDh, v_BxTxKxDh, index, out_BxTxHxDh
            )
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
    `kv`, a blocked cache (`init_cache`), the layers run one by one from per-layer params
    ('layers_0', ...) and the updated cache is returned.
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
            blocks, index = kv['blocks'], kv['index']
            new_layers = []
            for i in range(cfg.num_layers):
                layer_blocks = tuple(
                    (blk['layers'][i]['k'], blk['layers'][i]['v'], blk['pos']) for blk in blocks
                )
                x_BxTxD, last_kv = DecoderBlock(cfg, name=f'{LAYER_PREFIX}{i}')(
                    x_BxTxD, positions_BxT, None, (layer_blocks, index)
                )
                new_layers.append(last_kv)
            new_kv = kv_cache.append(kv, new_layers, positions_BxT, x_BxTxD)
        x_BxTxD = layers.RMSNorm(
            eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name='final_norm'
        )(x_BxTxD)
        if cfg.tie_embeddings and kv is not None:
            # E [V, D] is already [fan_out, fan_in]: the decoding form of x @ E^T.
            logits_BxTxV = layers.matmul_weight_lhs(embed.embedding.astype(dtype), x_BxTxD)
        elif cfg.tie_embeddings:
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
        out[f'{LAYER_PREFIX}{i}'] = jax.tree.map(
            functools.partial(_layer_slice, i), stacked, is_leaf=_is_spec
        )
    return out


def decode_layout(params: Params, fuse_qkv: bool = False) -> Params:
    """Stacked, per-layer or decoding layout -> the decoding layout (see the module doc).

    With `fuse_qkv` each layer's q, k and v kernels become one, 'qkv': {'kernel_t':
    [(H + 2K) * Dh, D]} (rows: q's, then k's, then v's), so a decoding step runs one
    matmul where it ran three. `forward_with_cache` gives the same logits with any layout
    (to float32 rounding); convert once, outside the decoding loop.
    """
    out = dict(unstack_layers(params))
    for name, layer in out.items():
        if name.startswith(LAYER_PREFIX):
            attn = layers.kernels_t(layer['attn'])
            if fuse_qkv and 'qkv' not in attn:
                parts = [attn.pop(n)['kernel_t'] for n in ('q', 'k', 'v')]
                attn['qkv'] = {'kernel_t': jnp.concatenate(parts, axis=0)}
            elif not fuse_qkv and 'qkv' in attn:
                raise ValueError(
                    'decode_layout cannot split a fused qkv kernel; start from params.'
                )
            out[name] = {**layer, 'attn': attn, 'mlp': layers.kernels_t(layer['mlp'])}
    return layers.kernels_t(out, ('lm_head',)) if 'lm_head' in out else out


def stack_layers(params: Params) -> Params:
    """Per-layer layout -> stacked layout (inverse of `unstack_layers`; arrays only)."""
    names = sorted(
        (k for k in params if k.startswith(LAYER_PREFIX)),
        key=lambda k: int(k[len(LAYER_PREFIX) :]),
    )
    if not names:
        return params
    out = {k: v for k, v in params.items() if not k.startswith(LAYER_PREFIX)}
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


def cache_logical_axes(cfg: DecoderConfig, num_blocks: int = 1) -> Cache:
    """Logical axis names of every cache leaf (same tree as `init_cache`)."""
    spec = jax.sharding.PartitionSpec
    block = {
        'pos': spec(axes.BATCH, axes.CACHE_LENGTH),
        'layers': tuple(
            {'k': spec(*_CACHE_K_AXES), 'v': spec(*_CACHE_V_AXES)} for _ in range(cfg.num_layers)
        ),
    }
    return {'blocks': (block,) * num_blocks, 'index': spec()}


def init_cache(
    cfg: DecoderConfig, batch_size: int, block_sizes: int | tuple[int, ...], dtype: Any = None
) -> Cache:
    """An empty blocked KV cache (`codellm_jax.models.kv_cache`), index 0.

    {'blocks': ({'pos': int32[B, S_i], 'layers': ({'k': [B, K, S_i, Dh],
                                                   'v': [B, K, Dh, S_i]}, ...)}, ...),
     'index': int32[]}, one block per entry of `block_sizes` (an int: one block).
    Batch-major per-layer leaves: a decoding step updates each in place and beam search
    reorders them along axis 0. Values are stored transposed (see `layers.cached_attention`).
    dtype defaults to cfg.dtype.
    """
    return kv_cache.empty(
        batch_size,
        block_sizes,
        cfg.num_layers,
        cfg.num_kv_heads,
        cfg.head_dim,
        layers.as_dtype(dtype or cfg.dtype),
        cfg.max_seq_len,
    )


def forward_with_cache(
    params: Params,
    cfg: DecoderConfig,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: Cache,
) -> tuple[jax.Array, Cache]:
    """Prefill or decode step. Returns (float32 logits [B, T, V], updated cache).

    The contract of `codellm_jax.models.kv_cache`: token t of row b (RoPE position
    `positions_BxT[b, t]`, negative = padding) attends to the cached keys at positions
    <= its own and to this call's; its keys/values go to slot `cache['index'] + t` of the
    last block. So right-padded prompts of different lengths prefill in one call (pads at
    position -1) and every row then continues at its own position, in the same slot.

    `params` may be in any layout; pass the decoding one (`decode_layout`, once) when
    calling this in a loop: with the stacked one every call slices (copies) the weights.
    """
    _check_config(cfg)
    b, t = tokens_BxT.shape
    if positions_BxT.shape != (b, t):
        raise ValueError(f'positions shape {positions_BxT.shape} != tokens shape {(b, t)}.')
    kv_cache.check(cache, b)
    for i, blk in enumerate(cache['blocks']):
        if len(blk['layers']) != cfg.num_layers:
            raise ValueError(
                f'cache block {i} has {len(blk["layers"])} layers, the model {cfg.num_layers}.'
            )
    logits_BxTxV, new_cache = Decoder(cfg).apply(
        {'params': unstack_layers(params)}, tokens_BxT, positions_BxT, None, cache
    )
    return logits_BxTxV, new_cache
