"""Hugging Face `LlamaForCausalLM` ↔ our decoder (`DecoderConfig` + params), numpy only.

HF Llama uses the same "rotate_half" RoPE layout as our decoder, so q/k projections import
with a plain transpose + reshape (no head permutation). Import resolves embedding tying the
way transformers 5 does: `tie_word_embeddings=True` with no `lm_head.weight` (or one equal
to the embedding) is tied; an `lm_head.weight` that differs from the embedding is kept as an
untied head.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from codellm_jax.interop import hf_mapping, safetensors_io
from codellm_jax.models.model_config import DecoderConfig, RopeScaling

ARCHITECTURE = 'LlamaForCausalLM'
MODEL_TYPE = 'llama'
_IGNORE = (r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq',)
_HF_DEFAULT_ROPE_THETA = 10000.0


def config_from_hf(hf: Mapping[str, Any]) -> DecoderConfig:
    """A `config.json` dict of `LlamaForCausalLM` → `DecoderConfig` (tying as declared)."""
    required = (
        'vocab_size',
        'hidden_size',
        'intermediate_size',
        'num_hidden_layers',
        'num_attention_heads',
    )
    absent = [k for k in required if k not in hf]
    if absent:
        raise ValueError(f'Llama config.json lacks required field(s) {absent}.')
    if hf.get('hidden_act', 'silu') != 'silu':
        raise ValueError(
            f'hidden_act={hf["hidden_act"]!r} is unsupported; our decoder is SwiGLU (silu).'
        )
    for flag in ('attention_bias', 'mlp_bias'):
        if hf.get(flag):
            raise ValueError(f'{flag}=True is unsupported: our decoder has no linear biases.')
    num_heads = hf['num_attention_heads']
    num_kv_heads = hf.get('num_key_value_heads') or num_heads
    if num_heads % num_kv_heads:
        raise ValueError(
            f'config.json: num_attention_heads={num_heads} is not divisible by '
            f'num_key_value_heads={num_kv_heads}; grouped-query attention needs H % K == 0.'
        )
    theta, scaling = _rope_from_hf(hf)
    return DecoderConfig(
        vocab_size=hf['vocab_size'],
        d_model=hf['hidden_size'],
        num_layers=hf['num_hidden_layers'],
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=hf.get('head_dim') or hf['hidden_size'] // num_heads,
        d_ff=hf['intermediate_size'],
        max_seq_len=hf.get('max_position_embeddings', 2048),
        rope_theta=float(theta),
        rope_scaling=scaling,
        norm_eps=float(hf.get('rms_norm_eps', 1e-6)),
        tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
    )


def config_to_hf(cfg: DecoderConfig, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`DecoderConfig` → a `config.json` dict that transformers (4.x and 5.x) loads.

    RoPE is written as `rope_theta` + `rope_scaling` (transformers 5 converts these to its
    `rope_parameters`). `extra` (e.g. bos/eos token ids) is merged last.
    """
    rope_scaling = None
    if cfg.rope_scaling is not None:
        rope_scaling = {'rope_type': 'llama3', **dataclasses.asdict(cfg.rope_scaling)}
    return {
        'architectures': [ARCHITECTURE],
        'model_type': MODEL_TYPE,
        'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.d_model,
        'intermediate_size': cfg.d_ff,
        'num_hidden_layers': cfg.num_layers,
        'num_attention_heads': cfg.num_heads,
        'num_key_value_heads': cfg.num_kv_heads,
        'head_dim': cfg.head_dim,
        'hidden_act': 'silu',
        'max_position_embeddings': cfg.max_seq_len,
        'rms_norm_eps': cfg.norm_eps,
        'rope_theta': cfg.rope_theta,
        'rope_scaling': rope_scaling,
        'tie_word_embeddings': cfg.tie_embeddings,
        'attention_bias': False,
        'mlp_bias': False,
        'torch_dtype': cfg.param_dtype,
        **(extra or {}),
    }


def tensor_maps(cfg: DecoderConfig) -> list[hf_mapping.TensorMap]:
    """Every HF tensor of `cfg` and where it lives in our params."""
    D, F, V, L = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.num_layers
    H, K, Dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    T = hf_mapping.TensorMap

    def layer(hf_suffix, path, shape, n_in=None):
        return T(f'model.layers.{{i}}.{hf_suffix}', ('layers', *path), shape, n_in, L)

    maps = [
        T('model.embed_tokens.weight', ('embed', 'embedding'), (V, D)),
        layer('input_layernorm.weight', ('attn_norm', 'scale'), (D,)),
        layer('self_attn.q_proj.weight', ('attn', 'q', 'kernel'), (D, H, Dh), 1),
        layer('self_attn.k_proj.weight', ('attn', 'k', 'kernel'), (D, K, Dh), 1),
        layer('self_attn.v_proj.weight', ('attn', 'v', 'kernel'), (D, K, Dh), 1),
        layer('self_attn.o_proj.weight', ('attn', 'o', 'kernel'), (H, Dh, D), 2),
        layer('post_attention_layernorm.weight', ('mlp_norm', 'scale'), (D,)),
        layer('mlp.gate_proj.weight', ('mlp', 'gate', 'kernel'), (D, F), 1),
        layer('mlp.up_proj.weight', ('mlp', 'up', 'kernel'), (D, F), 1),
        layer('mlp.down_proj.weight', ('mlp', 'down', 'kernel'), (F, D), 1),
        T('model.norm.weight', ('final_norm', 'scale'), (D,)),
    ]
    if not cfg.tie_embeddings:
        maps.append(T('lm_head.weight', ('lm_head', 'kernel'), (D, V), 1))
    return maps


def from_hf(
    hf_config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    param_dtype: str | None = None,
) -> tuple[DecoderConfig, dict[str, Any]]:
    """HF config dict + tensors → (`DecoderConfig`, params of numpy arrays).

    Args:
      hf_config: the parsed `config.json`.
      tensors: HF tensor name → array (e.g. from `safetensors_io.read_tensors`).
      param_dtype: 'float32' / 'bfloat16'; None keeps the checkpoint's (float16 → float32).
    """
    cfg = config_from_hf(hf_config)
    lm_head = tensors.get('lm_head.weight')
    embed = tensors.get('model.embed_tokens.weight')
    if cfg.tie_embeddings and lm_head is not None and embed is not None:
        if lm_head.shape != embed.shape or not np.array_equal(lm_head, embed):
            cfg = dataclasses.replace(cfg, tie_embeddings=False)
    maps = tensor_maps(cfg)
    optional = {'lm_head.weight': (cfg.vocab_size, cfg.d_model)} if cfg.tie_embeddings else {}
    hf_mapping.check_tensors(
        {k: tuple(v.shape) for k, v in tensors.items()},
        maps,
        optional=optional,
        ignore=_IGNORE,
        context=_describe(cfg),
    )
    dtype = hf_mapping.param_dtype(tensors, param_dtype)
    cfg = dataclasses.replace(cfg, param_dtype=dtype)
    return cfg, hf_mapping.to_params(tensors, maps, dtype)


def to_hf(cfg: DecoderConfig, params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our params → HF tensor dict (no `lm_head.weight` when tied, as transformers saves)."""
    return hf_mapping.to_hf(params, tensor_maps(cfg))


def load(hf_dir: str, param_dtype: str | None = None) -> tuple[DecoderConfig, dict[str, Any]]:
    """Reads `hf_dir/config.json` and its safetensors into (`DecoderConfig`, params)."""
    hf_config = safetensors_io.read_config(hf_dir)
    config_from_hf(hf_config)  # config errors before reading gigabytes of weights
    return from_hf(hf_config, safetensors_io.read_tensors(hf_dir), param_dtype)


def save(
    out_dir: str,
    cfg: DecoderConfig,
    params: Mapping[str, Any],
    max_shard_bytes: int | str = safetensors_io.DEFAULT_MAX_SHARD_BYTES,
    extra_config: Mapping[str, Any] | None = None,
) -> None:
    """Writes `config.json` + safetensors that `LlamaForCausalLM.from_pretrained` loads."""
    safetensors_io.write_checkpoint(
        out_dir, to_hf(cfg, params), config_to_hf(cfg, extra_config), max_shard_bytes
    )


def _rope_from_hf(hf: Mapping[str, Any]) -> tuple[float, RopeScaling | None]:
    """(theta, scaling) from transformers-5 `rope_parameters` or legacy `rope_theta` and
    `rope_scaling`."""
    params = dict(hf.get('rope_parameters') or {})
    legacy = dict(hf.get('rope_scaling') or {})
    theta = params.get('rope_theta', hf.get('rope_theta', _HF_DEFAULT_ROPE_THETA))
    scaling = (
        params if params.get('rope_type', params.get('type')) not in (None, 'default') else legacy
    )
    rope_type = scaling.get('rope_type', scaling.get('type', 'default'))
    if rope_type == 'default':
        return theta, None
    if rope_type != 'llama3':
        raise ValueError(
            f'RoPE scaling rope_type={rope_type!r} is unsupported; supported: default (none) '
            "and 'llama3' (Llama 3.1)."
        )
    fields = [f.name for f in dataclasses.fields(RopeScaling)]
    absent = [k for k in fields if k not in scaling]
    if absent:
        raise ValueError(f'llama3 rope scaling lacks field(s) {absent} in config.json.')
    return theta, RopeScaling(**{k: type(getattr(RopeScaling(), k))(scaling[k]) for k in fields})


def _describe(cfg: DecoderConfig) -> str:
    return (
        f'vocab_size={cfg.vocab_size}, hidden_size={cfg.d_model}, '
        f'intermediate_size={cfg.d_ff}, num_hidden_layers={cfg.num_layers}, '
        f'num_attention_heads={cfg.num_heads}, num_key_value_heads={cfg.num_kv_heads}, '
        f'head_dim={cfg.head_dim}, tie_word_embeddings={cfg.tie_embeddings}'
    )
