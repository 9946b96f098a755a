"""T5 / CodeT5 encoder-decoder: `flax.linen` modules and the pure functional API.

Parameter tree (layers stacked on a leading axis L, the same for scanned and unrolled):
```
{'shared': {'embedding': [V, D]},
 'encoder': {'rel_bias': {'embedding': [num_buckets, H]},
             'layers': {'attn_norm': {'scale': [L, D]},
                        'attn': {'q','k','v': {'kernel': [L, D, H, Dh]}, 'o': {'kernel': [L, H, Dh, D]}},
                        'mlp_norm': {'scale': [L, D]},
                        'mlp': {'wi' | 'wi_0','wi_1': {'kernel': [L, D, F]}, 'wo': {'kernel': [L, F, D]}}},
             'final_norm': {'scale': [D]}},
 'decoder': {'rel_bias': ..., 'layers': {'self_attn_norm', 'self_attn', 'cross_attn_norm',
             'cross_attn', 'mlp_norm', 'mlp'}, 'final_norm': ...},
 'lm_head': {'kernel': [D, V]}}   # absent when tie_embeddings: logits = (x * D**-0.5) @ shared.T
```
KV cache of `init_cache` / `decode_with_cache` (blocked, `codellm_jax.models.kv_cache`):
`{'blocks': ({'pos': [B', S_i], 'layers': ({'k': [B', H, S_i, Dh], 'v': [B', H, Dh, S_i]},
  ...one per layer)}, ...), 'index': int32[],
  'cross': {'layers': ({'k': [B, H, S, Dh], 'v': [B, H, Dh, S]}, ...), 'mask': [B, S]}}`
(head-major, values transposed: the layout `t5_attention` reads in place),
B' = n*B: decoder row i reads encoder row i // n. Only `cache['blocks']` is ever reordered.

`decode_layout(params)` is the layout for a decoding loop (`decode_with_cache`, once per
generator): the decoder per layer, and every kernel that a decoding step multiplies by
stored transposed, {'kernel_t': [fan_out, fan_in]} (`codellm_jax.models.decoder`'s module
doc says why). The cross-attention k/v kernels stay as they are: `init_cache` runs them once
over the whole encoder output.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codellm_jax import axes
from codellm_jax.models import kv_cache
from codellm_jax.models.decoder import LAYER_PREFIX, unstack_layers
from codellm_jax.models.layers import (
    REMAT_POLICIES,
    DenseGeneral,
    as_dtype,
    kernels_t,
    matmul_weight_lhs,
    maybe_remat,
)
from codellm_jax.models.model_config import EncoderDecoderConfig
from codellm_jax.models.t5_layers import DecoderLayer, EncoderLayer, RelativePositionBias, norm

Params = dict[str, Any]
Cache = dict[str, dict[str, jax.Array]]

_ACT = (axes.BATCH, axes.LENGTH, axes.EMBED)


def _layer_stack(layer_cls, cfg: EncoderDecoderConfig, num_layers: int, in_axes) -> nn.Module:
    """`layer_cls` scanned over L stacked layers (fully unrolled when not `scan_layers`)."""
    return nn.scan(
        maybe_remat(layer_cls, cfg.remat_policy),
        variable_axes={'params': 0},
        split_rngs={'params': True},
        in_axes=in_axes,
        length=num_layers,
        unroll=1 if cfg.scan_layers else num_layers,
        metadata_params={nn.PARTITION_NAME: axes.LAYERS},
    )(cfg, name='layers')


def _rel_bias(cfg: EncoderDecoderConfig, bidirectional: bool) -> RelativePositionBias:
    return RelativePositionBias(
        cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance,
        cfg.num_heads,
        bidirectional,
        embedding_std=cfg.d_model**-0.5,
        param_dtype=cfg.param_dtype,
        name='rel_bias',
    )


class Encoder(nn.Module):
    """Encoder stack on embedded inputs [B, S, D] → [B, S, D]; `mask` [B, 1 or S, S]."""

    cfg: EncoderDecoderConfig

    @nn.compact
    def __call__(self, x_BxSxD, mask_BxSxS):
        cfg = self.cfg
        # Relative offsets of arange equal those of per-segment positions, so packed rows
        # need no positions here.
        positions_1xS = jnp.arange(x_BxSxD.shape[1])[None]
        bias_1xHxSxS = _rel_bias(cfg, bidirectional=True)(positions_1xS, positions_1xS)
        layers = _layer_stack(EncoderLayer, cfg, cfg.num_encoder_layers, (nn.broadcast,) * 2)
        x_BxSxD, _ = layers(x_BxSxD, bias_1xHxSxS, mask_BxSxS)
        return norm(cfg, 'final_norm')(x_BxSxD)


class Decoder(nn.Module):
    """Decoder stack on embedded targets [B', T, D] → ([B', T, D], new cache | None).

    Without a cache, targets attend to each other under `self_mask` [B', T, T] through the
    scanned stack ('layers'). With one (the blocked cache of `init_cache`), the layers run
    one by one from per-layer params ('layers_0', ...; `unstack_decoder_layers`): a query at
    position p sees the cached and this call's keys at positions in [0, p] (`kv_cache`),
    and each layer's new self k/v are written in place into the last block; the updated
    cache is returned. `positions` [B', T] feed the relative position bias; `cross_mask`
    broadcasts to [B', T, S].
    """

    cfg: EncoderDecoderConfig

    @nn.compact
    def __call__(self, x_BxTxD, encoded, cross_mask, self_mask, positions_BxT, cache=None):
        cfg = self.cfg
        rel_bias = _rel_bias(cfg, bidirectional=False)
        new_bias = rel_bias(positions_BxT, positions_BxT)
        if cache is None:
            in_axes = (nn.broadcast,) * 3 + (0,)
            layers = _layer_stack(DecoderLayer, cfg, cfg.num_decoder_layers, in_axes)
            x_BxTxD, _ = layers(x_BxTxD, ((new_bias, self_mask),), encoded, cross_mask, None)
            return norm(cfg, 'final_norm')(x_BxTxD), None
        blocks, index = cache['blocks'], cache['index']
        self_args = tuple(
            (rel_bias(positions_BxT, blk['pos']), kv_cache.key_mask(blk['pos'], positions_BxT))
            for blk in blocks
        )
        self_args += ((new_bias, kv_cache.key_mask(positions_BxT, positions_BxT)),)
        new_layers = []
        for i in range(cfg.num_decoder_layers):
            cross = cache['cross']['layers'][i]
            layer_cache = {
                'k': tuple(blk['layers'][i]['k'] for blk in blocks),
                'v': tuple(blk['layers'][i]['v'] for blk in blocks),
                'cross_k': cross['k'],
                'cross_v': cross['v'],
            }
            x_BxTxD, new_kv = DecoderLayer(cfg, name=f'{LAYER_PREFIX}{i}')(
                x_BxTxD, self_args, encoded, cross_mask, layer_cache
            )
            last = blocks[-1]['layers'][i]
            new_layers.append(kv_cache.write_layer(last, new_kv['k'], new_kv['v'], index, x_BxTxD))
        new_cache = kv_cache.append(cache, new_layers, positions_BxT, x_BxTxD)
        return norm(cfg, 'final_norm')(x_BxTxD), new_cache


class EncoderDecoder(nn.Module):
    """The whole T5: shared embedding, encoder, decoder and output projection."""

    cfg: EncoderDecoderConfig

    def setup(self):
        cfg = self.cfg
        self.shared = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), (axes.VOCAB, axes.EMBED)
            ),
            dtype=as_dtype(cfg.dtype),
            param_dtype=as_dtype(cfg.param_dtype),
        )
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = DenseGeneral(
                (cfg.vocab_size,),
                (axes.EMBED, axes.VOCAB),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                kernel_init=nn.initializers.normal(cfg.d_model**-0.5),
            )

    def _embed(self, tokens):
        return nn.with_logical_constraint(self.shared(tokens), _ACT)

    def _logits(self, x_BxTxD, decoding: bool = False):
        if self.cfg.tie_embeddings and decoding:
            # The shared embedding [V, D] is already [fan_out, fan_in]: the decoding form.
            x_BxTxD = x_BxTxD * (self.cfg.d_model**-0.5)
            logits = matmul_weight_lhs(self.shared.embedding.astype(x_BxTxD.dtype), x_BxTxD)
        elif self.cfg.tie_embeddings:
            logits = self.shared.attend(x_BxTxD * (self.cfg.d_model**-0.5))
        else:
            logits = self.lm_head(x_BxTxD)
        logits = logits.astype(jnp.float32)
        return nn.with_logical_constraint(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))

    def encode(self, tokens_BxS, mask_BxS, segment_ids_BxS=None):
        mask_BxSxS = mask_BxS[:, None, :]
        if segment_ids_BxS is not None:
            mask_BxSxS = mask_BxSxS & (segment_ids_BxS[:, :, None] == segment_ids_BxS[:, None, :])
        return self.encoder(self._embed(tokens_BxS), mask_BxSxS)

    def decode(
        self,
        tokens_BxT,
        encoded_BxSxD,
        encoder_mask_BxS,
        segment_ids_BxT=None,
        positions_BxT=None,
        encoder_segment_ids_BxS=None,
    ):
        b, t = tokens_BxT.shape
        cross_mask = _cross_mask(encoder_mask_BxS, b)
        if segment_ids_BxT is not None and encoder_segment_ids_BxS is not None:
            enc_seg = jnp.repeat(encoder_segment_ids_BxS, b // encoded_BxSxD.shape[0], axis=0)
            cross_mask = cross_mask & (segment_ids_BxT[:, :, None] == enc_seg[:, None, :])
        if segment_ids_BxT is None:
            self_mask = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
        else:
            same = segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :]
            self_mask = same & jnp.tril(jnp.ones((t, t), dtype=bool))[None]
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(t)[None], (b, t))
        x_BxTxD, _ = self.decoder(
            self._embed(tokens_BxT),
            encoded_BxSxD,
            cross_mask,
            self_mask,
            positions_BxT,
        )
        return self._logits(x_BxTxD)

    def decode_step(self, tokens_BxT, positions_BxT, cache):
        x_BxTxD, new_cache = self.decoder(
            self._embed(tokens_BxT),
            None,
            _cross_mask(cache['cross']['mask'], tokens_BxT.shape[0]),
            None,
            positions_BxT,
            cache,
        )
        return self._logits(x_BxTxD, decoding=True), new_cache

    def __call__(self, enc_tokens, dec_tokens):
        enc_mask = enc_tokens != 0
        return self.decode(dec_tokens, self.encode(enc_tokens, enc_mask), enc_mask)


def _cross_mask(encoder_mask_bxS: jax.Array, batch: int) -> jax.Array:
    """[b, S] key mask → [B', 1, S] for B' = n*b decoder rows (row i uses encoder row i//n)."""
    b = encoder_mask_bxS.shape[0]
    if batch % b:
        raise ValueError(
            f'Decoder batch {batch} is not a multiple of encoder batch {b}; decoder rows must '
            'be n adjacent copies of each encoder row.'
        )
    return jnp.repeat(encoder_mask_bxS.astype(bool), batch // b, axis=0)[:, None, :]


def _check_tokens(name: str, tokens) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f'{name} must be an integer array [batch, length]; got {tokens.dtype}{tokens.shape}.'
        )


def _check_mask(name: str, mask, shape) -> None:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f'{name} has shape {tuple(mask.shape)}; expected {tuple(shape)}.')


def _check_config(cfg: EncoderDecoderConfig) -> None:
    if cfg.remat_policy not in REMAT_POLICIES:
        raise ValueError(
            f'Unknown remat_policy {cfg.remat_policy!r}; expected one of {REMAT_POLICIES}.'
        )


def init_params_boxed(cfg: EncoderDecoderConfig, rng: jax.Array) -> Params:
    """Params with `nn.Partitioned` leaves (logical axis names attached): for sharded init."""
    _check_config(cfg)
    tokens_1x1 = jnp.ones((1, 1), jnp.int32)
    return EncoderDecoder(cfg).init(rng, tokens_1x1, tokens_1x1)['params']


def init_params(cfg: EncoderDecoderConfig, rng: jax.Array) -> Params:
    """Fresh parameters (plain nested dict, HF-T5-style init) in `cfg.param_dtype`."""
    return nn.meta.unbox(init_params_boxed(cfg, rng))


def param_logical_axes(cfg: EncoderDecoderConfig) -> Params:
    """Tree of `PartitionSpec`s of logical axis names, shaped like the params (no allocation)."""
    boxed = jax.eval_shape(functools.partial(init_params_boxed, cfg), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def param_shapes(cfg: EncoderDecoderConfig) -> Params:
    """Tree of `jax.ShapeDtypeStruct` of the params (no allocation)."""
    return jax.eval_shape(functools.partial(init_params, cfg), jax.random.key(0))


def num_params(cfg: EncoderDecoderConfig) -> int:
    """Total parameter count, computed abstractly."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(param_shapes(cfg))))


def encode(
    params: Params,
    cfg: EncoderDecoderConfig,
    tokens_BxS: jax.Array,
    mask_BxS: jax.Array | None = None,
    segment_ids_BxS: jax.Array | None = None,
) -> jax.Array:
    """Encoder outputs [B, S, D] in `cfg.dtype`.

    `mask` (default: `segment_ids > 0` when given, else tokens != 0) hides pad keys; with
    `segment_ids` (packed rows, 0 = padding) a token only attends within its segment.
    """
    _check_tokens('tokens_BxS', tokens_BxS)
    if segment_ids_BxS is not None:
        _check_mask('segment_ids_BxS', segment_ids_BxS, tokens_BxS.shape)
    if mask_BxS is None:
        mask_BxS = tokens_BxS != 0 if segment_ids_BxS is None else segment_ids_BxS > 0
    _check_mask('mask_BxS', mask_BxS, tokens_BxS.shape)
    return EncoderDecoder(cfg).apply(
        {'params': params},
        tokens_BxS,
        mask_BxS.astype(bool),
        segment_ids_BxS,
        method=EncoderDecoder.encode,
    )


def decode(
    params: Params,
    cfg: EncoderDecoderConfig,
    decoder_tokens_BxT: jax.Array,
    encoded_BxSxD: jax.Array,
    encoder_mask_BxS: jax.Array | None,
    decoder_segment_ids_BxT: jax.Array | None = None,
    decoder_positions_BxT: jax.Array | None = None,
    encoder_segment_ids_BxS: jax.Array | None = None,
) -> jax.Array:
    """Full causal decoder pass (training/scoring) → float32 logits [B', T, V].

    Target query t sees targets s <= t with an equal segment id (packed training; 0 =
    padding); `decoder_positions` (default arange) only feed the relative position bias.
    Cross-attention sees encoder keys where `encoder_mask` (None = all) is True and, when
    both segment ids are given (packed seq2seq), only keys of the same segment.
    B' may be n*B: decoder row i attends to encoder row i // n.
    """
    _check_tokens('decoder_tokens_BxT', decoder_tokens_BxT)
    if encoded_BxSxD.ndim != 3 or encoded_BxSxD.shape[-1] != cfg.d_model:
        raise ValueError(
            f'encoded_BxSxD has shape {encoded_BxSxD.shape}; expected [B, S, {cfg.d_model}].'
        )
    if encoder_mask_BxS is None:
        encoder_mask_BxS = jnp.ones(encoded_BxSxD.shape[:2], bool)
    _check_mask('encoder_mask_BxS', encoder_mask_BxS, encoded_BxSxD.shape[:2])
    if encoder_segment_ids_BxS is not None:
        _check_mask('encoder_segment_ids_BxS', encoder_segment_ids_BxS, encoded_BxSxD.shape[:2])
    for name, arr in (
        ('decoder_segment_ids_BxT', decoder_segment_ids_BxT),
        ('decoder_positions_BxT', decoder_positions_BxT),
    ):
        if arr is not None:
            _check_mask(name, arr, decoder_tokens_BxT.shape)
    return EncoderDecoder(cfg).apply(
        {'params': params},
        decoder_tokens_BxT,
        encoded_BxSxD,
        encoder_mask_BxS.astype(bool),
        decoder_segment_ids_BxT,
        decoder_positions_BxT,
        encoder_segment_ids_BxS,
        method=EncoderDecoder.decode,
    )


def forward(
    params: Params,
    cfg: EncoderDecoderConfig,
    encoder_tokens_BxS: jax.Array,
    decoder_tokens_BxT: jax.Array,
    encoder_mask_BxS: jax.Array | None = None,
    decoder_segment_ids_BxT: jax.Array | None = None,
    decoder_positions_BxT: jax.Array | None = None,
    encoder_segment_ids_BxS: jax.Array | None = None,
) -> jax.Array:
    """`decode(encode(...))` → float32 logits [B, T, V] (masks and segments as there)."""
    if encoder_mask_BxS is None:
        encoder_mask_BxS = (
            encoder_tokens_BxS != 0
            if encoder_segment_ids_BxS is None
            else encoder_segment_ids_BxS > 0
        )
    encoded_BxSxD = encode(
        params, cfg, encoder_tokens_BxS, encoder_mask_BxS, encoder_segment_ids_BxS
    )
    return decode(
        params,
        cfg,
        decoder_tokens_BxT,
        encoded_BxSxD,
        encoder_mask_BxS,
        decoder_segment_ids_BxT,
        decoder_positions_BxT,
        encoder_segment_ids_BxS,
    )


def init_cache(
    params: Params,
    cfg: EncoderDecoderConfig,
    encoded_BxSxD: jax.Array,
    encoder_mask_BxS: jax.Array | None,
    batch_size: int,
    block_sizes: int | tuple[int, ...],
    dtype: str | None = None,
) -> Params:
    """A decoding cache for `batch_size` = n*B decoder rows, one block per `block_sizes`.

    Cross-attention k/v per layer are projected here, once, from `encoded`; the self blocks
    start empty (positions -1). Layouts as in the module docstring. `params` may
    hold the decoder's layers stacked or per layer. `dtype` defaults to `cfg.dtype`.
    """
    b, s, d = encoded_BxSxD.shape
    if d != cfg.d_model:
        raise ValueError(f'encoded_BxSxD has width {d}; the model has d_model={cfg.d_model}.')
    if batch_size % b:
        raise ValueError(
            f'batch_size={batch_size} is not a multiple of the encoder batch {b}; use n*{b} '
            'with the n rows of each input adjacent.'
        )
    if encoder_mask_BxS is None:
        encoder_mask_BxS = jnp.ones((b, s), bool)
    _check_mask('encoder_mask_BxS', encoder_mask_BxS, (b, s))
    dtype = as_dtype(dtype or cfg.dtype)
    cache = kv_cache.empty(
        batch_size,
        block_sizes,
        cfg.num_decoder_layers,
        cfg.num_heads,
        cfg.head_dim,
        dtype,
        cfg.max_seq_len,
    )
    compute = as_dtype(cfg.dtype)
    x = encoded_BxSxD.astype(compute)
    dec = unstack_layers(params['decoder'])

    def project(spec: str, kernel_DxHxK: jax.Array) -> jax.Array:
        return jnp.einsum(spec, x, kernel_DxHxK.astype(compute)).astype(dtype)

    cross_layers = tuple(
        {
            'k': project('bsd,dhk->bhsk', dec[f'{LAYER_PREFIX}{i}']['cross_attn']['k']['kernel']),
            'v': project('bsd,dhk->bhks', dec[f'{LAYER_PREFIX}{i}']['cross_attn']['v']['kernel']),
        }
        for i in range(cfg.num_decoder_layers)
    )
    return {**cache, 'cross': {'layers': cross_layers, 'mask': encoder_mask_BxS.astype(bool)}}


def cache_logical_axes(cfg: EncoderDecoderConfig, num_blocks: int = 1) -> Cache:
    """Logical axis names (`PartitionSpec`) of every cache leaf (same tree as `init_cache`)."""
    spec = jax.sharding.PartitionSpec
    self_k = spec(axes.BATCH, axes.HEADS, axes.CACHE_LENGTH, axes.HEAD_DIM)
    self_v = spec(axes.BATCH, axes.HEADS, axes.HEAD_DIM, axes.CACHE_LENGTH)
    cross_k = spec(axes.BATCH, axes.HEADS, axes.LENGTH, axes.HEAD_DIM)
    cross_v = spec(axes.BATCH, axes.HEADS, axes.HEAD_DIM, axes.LENGTH)
    n = cfg.num_decoder_layers
    block = {
        'pos': spec(axes.BATCH, axes.CACHE_LENGTH),
        'layers': tuple({'k': self_k, 'v': self_v} for _ in range(n)),
    }
    return {
        'blocks': (block,) * num_blocks,
        'index': spec(),
        'cross': {
            'layers': tuple({'k': cross_k, 'v': cross_v} for _ in range(n)),
            'mask': spec(axes.BATCH, axes.LENGTH),
        },
    }


def decode_layout(params: Params) -> Params:
    """Any layout -> the decoding layout (see the module doc); idempotent.

    `decode_with_cache` gives the same logits with any layout (to float32 rounding); the
    decoding one is faster in a loop. Convert once, outside it.
    """
    params = unstack_decoder_layers(params)
    dec = dict(params['decoder'])
    for name, layer in dec.items():
        if name.startswith(LAYER_PREFIX):
            dec[name] = {
                **layer,
                'self_attn': kernels_t(layer['self_attn']),
                'cross_attn': kernels_t(layer['cross_attn'], ('q', 'o')),
                'mlp': kernels_t(layer['mlp']),
            }
    out = {**params, 'decoder': dec}
    return kernels_t(out, ('lm_head',)) if 'lm_head' in out else out


def unstack_decoder_layers(params: Params) -> Params:
    """Params with the decoder's stacked layers split per layer ('layers_i'), as cached
    decoding runs them (a slice of a stacked weight is a copy, every step, on XLA CPU); the
    encoder is kept stacked. Already per-layer params are returned as they are."""
    return {**params, 'decoder': unstack_layers(params['decoder'])}


def decode_with_cache(
    params: Params,
    cfg: EncoderDecoderConfig,
    tokens_BxT: jax.Array,
    positions_BxT: jax.Array,
    cache: Cache,
) -> tuple[jax.Array, Cache]:
    """Incremental decoding → (float32 logits [B', T, V], updated cache).

    The blocked-cache contract of `codellm_jax.models.kv_cache`: token t of row b (position
    `positions[b, t]`, negative = padding) attends to the cached and new self keys at
    positions <= its own; its self k/v go to slot `cache['index'] + t` of the last block,
    one in-place write per leaf for all layers and rows.
    """
    _check_tokens('tokens_BxT', tokens_BxT)
    _check_mask('positions_BxT', positions_BxT, tokens_BxT.shape)
    kv_cache.check(cache, tokens_BxT.shape[0])
    return EncoderDecoder(cfg).apply(
        {'params': unstack_decoder_layers(params)},
        tokens_BxT,
        positions_BxT,
        cache,
        method=EncoderDecoder.decode_step,
    )
