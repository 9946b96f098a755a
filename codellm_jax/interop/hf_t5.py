"""Hugging Face `T5ForConditionalGeneration` (T5, T5 v1.1, CodeT5) ↔ our encoder-decoder.

The LM head, as transformers 5.x computes it:
  logits = (x * D**-0.5 if scale else x) @ W.T, with
  scale = config['scale_decoder_outputs'] when present, else
          config['tie_word_embeddings'] is not False (the T5 v1.0 / v1.1 convention), and
  W = `lm_head.weight` when the file holds one that differs from `shared.weight`, else
      `shared.weight` (transformers 5 always ties T5's head to `shared` otherwise, even
      when `tie_word_embeddings=False`; it only drops the rescale).
We import that exactly: scale with W == shared → `tie_embeddings=True`; no scale →
`tie_embeddings=False` with `lm_head.kernel = W.T` (a copy of shared when tied); scale with
a distinct W → `tie_embeddings=False` with the rescale folded into the kernel. Export writes
`tie_word_embeddings` = `tie_embeddings` and `lm_head.weight` only when untied, which both
transformers 4.x and 5.x read back as the same model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from codellm_jax.interop import hf_mapping, safetensors_io
from codellm_jax.models.model_config import EncoderDecoderConfig

ARCHITECTURE = 'T5ForConditionalGeneration'
MODEL_TYPE = 't5'
_FEED_FORWARD = ('relu', 'gated-gelu')
_EMBED_COPIES = ('encoder.embed_tokens.weight', 'decoder.embed_tokens.weight')
# Original t5-small/base files carry an unused cross-attention bias; transformers skips it too.
_IGNORE = (r'decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight',)


def config_from_hf(hf: Mapping[str, Any]) -> EncoderDecoderConfig:
    """A `config.json` dict of `T5ForConditionalGeneration` → `EncoderDecoderConfig`.

    `tie_embeddings` is the declared one (`scale_decoder_outputs`, else
    `tie_word_embeddings`); `from_hf` refines it with the weights.
    """
    required = ('vocab_size', 'd_model', 'd_kv', 'd_ff', 'num_layers', 'num_heads')
    absent = [k for k in required if k not in hf]
    if absent:
        raise ValueError(f'T5 config.json lacks required field(s) {absent}.')
    feed_forward = hf.get('feed_forward_proj', 'relu')
    if feed_forward not in _FEED_FORWARD:
        raise ValueError(
            f'feed_forward_proj={feed_forward!r} is unsupported; supported: {list(_FEED_FORWARD)}.'
        )
    return EncoderDecoderConfig(
        vocab_size=hf['vocab_size'],
        d_model=hf['d_model'],
        num_encoder_layers=hf['num_layers'],
        num_decoder_layers=hf.get('num_decoder_layers') or hf['num_layers'],
        num_heads=hf['num_heads'],
        head_dim=hf['d_kv'],
        d_ff=hf['d_ff'],
        feed_forward=feed_forward,
        relative_attention_num_buckets=hf.get('relative_attention_num_buckets', 32),
        relative_attention_max_distance=hf.get('relative_attention_max_distance', 128),
        norm_eps=float(hf.get('layer_norm_epsilon', 1e-6)),
        tie_embeddings=_scales_output(hf),
        max_seq_len=hf.get('n_positions', 512),
        decoder_start_token_id=_decoder_start(hf),
    )


def config_to_hf(
    cfg: EncoderDecoderConfig, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`EncoderDecoderConfig` → a `config.json` dict; `extra` is merged last."""
    return {
        'architectures': [ARCHITECTURE],
        'model_type': MODEL_TYPE,
        'vocab_size': cfg.vocab_size,
        'd_model': cfg.d_model,
        'd_kv': cfg.head_dim,
        'd_ff': cfg.d_ff,
        'num_layers': cfg.num_encoder_layers,
        'num_decoder_layers': cfg.num_decoder_layers,
        'num_heads': cfg.num_heads,
        'feed_forward_proj': cfg.feed_forward,
        'relative_attention_num_buckets': cfg.relative_attention_num_buckets,
        'relative_attention_max_distance': cfg.relative_attention_max_distance,
        'layer_norm_epsilon': cfg.norm_eps,
        'tie_word_embeddings': cfg.tie_embeddings,
        'is_encoder_decoder': True,
        'n_positions': cfg.max_seq_len,
        'pad_token_id': 0,
        'eos_token_id': 1,
        'decoder_start_token_id': cfg.decoder_start_token_id,
        'torch_dtype': cfg.param_dtype,
        **(extra or {}),
    }


def tensor_maps(cfg: EncoderDecoderConfig) -> list[hf_mapping.TensorMap]:
    """Every HF tensor of `cfg` and where it lives in our params."""
    D, F, V, H, Dh = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_heads, cfg.head_dim
    T = hf_mapping.TensorMap

    def attn(stack, L, hf_prefix, ours):
        return [
            *(
                T(f'{stack}.block.{{i}}.{hf_prefix}.{n}.weight', (stack, 'layers', ours, n, 'kernel'),
                  (D, H, Dh), 1, L)
                for n in ('q', 'k', 'v')
            ),
            T(f'{stack}.block.{{i}}.{hf_prefix}.o.weight', (stack, 'layers', ours, 'o', 'kernel'),
              (H, Dh, D), 2, L),
        ]  # fmt: skip

    def norm(stack, L, hf_layer, ours):
        name = f'{stack}.block.{{i}}.layer.{hf_layer}.layer_norm.weight'
        return T(name, (stack, 'layers', ours, 'scale'), (D,), None, L)

    def mlp(stack, L, hf_layer):
        prefix = f'{stack}.block.{{i}}.layer.{hf_layer}.DenseReluDense'
        wis = ('wi',) if cfg.feed_forward == 'relu' else ('wi_0', 'wi_1')
        return [
            *(T(f'{prefix}.{w}.weight', (stack, 'layers', 'mlp', w, 'kernel'), (D, F), 1, L)
              for w in wis),
            T(f'{prefix}.wo.weight', (stack, 'layers', 'mlp', 'wo', 'kernel'), (F, D), 1, L),
        ]  # fmt: skip

    def shared_parts(stack):
        bias = f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight'
        return [
            T(bias, (stack, 'rel_bias', 'embedding'), (cfg.relative_attention_num_buckets, H)),
            T(f'{stack}.final_layer_norm.weight', (stack, 'final_norm', 'scale'), (D,)),
        ]

    Le, Ld = cfg.num_encoder_layers, cfg.num_decoder_layers
    maps = [
        T('shared.weight', ('shared', 'embedding'), (V, D)),
        *shared_parts('encoder'),
        norm('encoder', Le, 0, 'attn_norm'),
        *attn('encoder', Le, 'layer.0.SelfAttention', 'attn'),
        norm('encoder', Le, 1, 'mlp_norm'),
        *mlp('encoder', Le, 1),
        *shared_parts('decoder'),
        norm('decoder', Ld, 0, 'self_attn_norm'),
        *attn('decoder', Ld, 'layer.0.SelfAttention', 'self_attn'),
        norm('decoder', Ld, 1, 'cross_attn_norm'),
        *attn('decoder', Ld, 'layer.1.EncDecAttention', 'cross_attn'),
        norm('decoder', Ld, 2, 'mlp_norm'),
        *mlp('decoder', Ld, 2),
    ]
    if not cfg.tie_embeddings:
        maps.append(T('lm_head.weight', ('lm_head', 'kernel'), (D, V), 1))
    return maps


def from_hf(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    param_dtype: str | None = None,
) -> tuple[EncoderDecoderConfig, dict[str, Any]]:
    """HF config dict + tensors → (`EncoderDecoderConfig`, params of numpy arrays).

    See the module docstring for how the LM head / tying is resolved. `param_dtype`:
    'float32' / 'bfloat16'; None keeps the checkpoint's (float16 → float32).
    """
    cfg = config_from_hf(hf_config)
    scale = cfg.tie_embeddings
    D, V = cfg.d_model, cfg.vocab_size
    tensors = dict(tensors)
    shared = tensors.get('shared.weight')
    if shared is None:  # Some exports keep only the encoder's copy.
        shared = tensors.get('encoder.embed_tokens.weight')
        if shared is not None:
            tensors['shared.weight'] = shared
    if shared is not None:
        for name in _EMBED_COPIES:
            copy = tensors.pop(name, None)
            if copy is not None and (
                copy.shape != shared.shape or not np.array_equal(copy, shared)
            ):
                raise ValueError(
                    f'{name} differs from shared.weight; separate encoder/decoder embeddings '
                    'are unsupported (T5 shares one embedding).'
                )
    lm_head = tensors.pop('lm_head.weight', None)
    if lm_head is not None and lm_head.shape != (V, D):
        raise ValueError(
            f'Checkpoint does not match its config: lm_head.weight: expected {(V, D)}, got '
            f'{lm_head.shape} (vocab_size={V}, d_model={D}).'
        )
    distinct = lm_head is not None and (shared is None or not np.array_equal(lm_head, shared))
    cfg = dataclasses.replace(cfg, tie_embeddings=scale and not distinct)
    dtype = hf_mapping.param_dtype(tensors, param_dtype)
    cfg = dataclasses.replace(cfg, param_dtype=dtype)
    if not cfg.tie_embeddings and (distinct or shared is not None):
        head = np.asarray(lm_head if distinct else shared, np.float32)
        tensors['lm_head.weight'] = head * np.float32(D**-0.5) if scale else head
    maps = tensor_maps(cfg)
    hf_mapping.check_tensors(
        {k: tuple(v.shape) for k, v in tensors.items()},
        maps,
        ignore=_IGNORE,
        context=_describe(cfg),
    )
    return cfg, hf_mapping.to_params(tensors, maps, dtype)


def to_hf(cfg: EncoderDecoderConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our params → HF tensor dict (`lm_head.weight` only when untied)."""
    return hf_mapping.to_hf(params, tensor_maps(cfg))


def load(
    hf_dir: str, param_dtype: str | None = None
) -> tuple[EncoderDecoderConfig, dict[str, Any]]:
    """Reads `hf_dir/config.json` and its safetensors into (`EncoderDecoderConfig`, params)."""
    hf_config = safetensors_io.read_config(hf_dir)
    config_from_hf(hf_config)  # config errors before reading the weights
    return from_hf(hf_config, safetensors_io.read_tensors(hf_dir), param_dtype)


def save(
    out_dir: str,
    cfg: EncoderDecoderConfig,
    params: Mapping[str, Any],
    max_shard_bytes: int | str = safetensors_io.DEFAULT_MAX_SHARD_BYTES,
    extra_config: Mapping[str, Any] | None = None,
) -> None:
    """Writes `config.json` + safetensors that `T5ForConditionalGeneration` loads."""
    safetensors_io.write_checkpoint(
        out_dir, to_hf(cfg, params), config_to_hf(cfg, extra_config), max_shard_bytes
    )


def _scales_output(hf: Mapping[str, Any]) -> bool:
    if 'scale_decoder_outputs' in hf:
        return bool(hf['scale_decoder_outputs'])
    return hf.get('tie_word_embeddings', True) is not False


def _decoder_start(hf: Mapping[str, Any]) -> int:
    start = hf.get('decoder_start_token_id')
    if start is None:
        start = hf.get('pad_token_id')
    return 0 if start is None else int(start)


def _describe(cfg: EncoderDecoderConfig) -> str:
    return (
        f'vocab_size={cfg.vocab_size}, d_model={cfg.d_model}, d_kv={cfg.head_dim}, '
        f'd_ff={cfg.d_ff}, num_layers={cfg.num_encoder_layers}, '
        f'num_decoder_layers={cfg.num_decoder_layers}, num_heads={cfg.num_heads}, '
        f'feed_forward_proj={cfg.feed_forward}, '
        f'relative_attention_num_buckets={cfg.relative_attention_num_buckets}'
    )
