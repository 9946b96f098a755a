"""Tiny random Hugging Face models built offline, for parity tests (needs torch).

  hf_model, hf_dir = tiny_llama(tmp_path, num_key_value_heads=1)
  hf_model, hf_dir = tiny_t5(tmp_path, feed_forward='gated-gelu')
  logits = hf_logits_llama(hf_model, tokens_BxT)        # numpy float32 [B, T, V]

Models are float32, eager attention, in eval mode, with every weight re-drawn (seeded) so
logits are O(1) and differ between tokens: HF's default T5 init gives an all-token-0 model
and unit norms would hide a mis-mapped norm. `hf_dir` holds `config.json` and
`model.safetensors` (or shards + index when `max_shard_size` is given).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import transformers

LLAMA_DEFAULTS = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    tie_word_embeddings=False,
)
T5_DEFAULTS = dict(
    vocab_size=256,
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    dropout_rate=0.0,
    decoder_start_token_id=0,
)
# Llama 3.1's rope scaling, with a small original context so tiny tests cross every regime.
LLAMA3_ROPE_SCALING = dict(
    rope_type='llama3',
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=32,
)


def reinit_(
    model: torch.nn.Module, seed: int = 0, std: float = 0.1, embed_std: float | None = None
) -> None:
    """Redraws every weight in place: N(0, std) for matrices (N(0, embed_std) for input
    embeddings), 1 + N(0, 0.1) for norm scales. Tied weights (one tensor) are drawn once."""
    gen = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for name, p in model.named_parameters(remove_duplicate=False):
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 1 and 'norm' in name:
                p.copy_(1.0 + 0.1 * noise)
            elif embed_std is not None and name.split('.')[-2] in ('shared', 'embed_tokens'):
                p.copy_(embed_std * noise)
            else:
                p.copy_(std * noise)


def tiny_llama(
    tmp_path: str | os.PathLike,
    seed: int = 0,
    max_shard_size: str | None = None,
    **overrides: Any,
) -> tuple[transformers.LlamaForCausalLM, str]:
    """A tiny random `LlamaForCausalLM` saved under `tmp_path/llama`.

    Args:
      tmp_path: parent directory.
      seed: weight seed.
      max_shard_size: e.g. '40KB' to save sharded safetensors with an index.
      **overrides: `LlamaConfig` fields over `LLAMA_DEFAULTS`, e.g. `num_key_value_heads=1`,
        `tie_word_embeddings=True`, `rope_scaling=LLAMA3_ROPE_SCALING`.
    Returns:
      (model in eval mode, float32, eager attention; its directory).
    """
    config = transformers.LlamaConfig(**{**LLAMA_DEFAULTS, **overrides})
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM._from_config(
        config, attn_implementation='eager', dtype=torch.float32
    )
    reinit_(model, seed)
    return model.eval(), _save(model, os.path.join(tmp_path, 'llama'), max_shard_size)


def tiny_t5(
    tmp_path: str | os.PathLike,
    feed_forward: str = 'relu',
    seed: int = 0,
    untied_lm_head: bool = False,
    max_shard_size: str | None = None,
    **overrides: Any,
) -> tuple[transformers.T5ForConditionalGeneration, str]:
    """A tiny random `T5ForConditionalGeneration` saved under `tmp_path/t5`.

    Args:
      tmp_path: parent directory.
      feed_forward: `feed_forward_proj`, 'relu' (T5 v1.0 / CodeT5) or 'gated-gelu' (v1.1).
      seed: weight seed.
      untied_lm_head: give the LM head its own random weight (transformers 5 otherwise
        always shares it with `shared`; `tie_word_embeddings=False` only drops the
        `d_model**-0.5` output rescale).
      max_shard_size: e.g. '40KB' to save sharded safetensors with an index.
      **overrides: `T5Config` fields over `T5_DEFAULTS`, e.g. `tie_word_embeddings=False`.
    Returns:
      (model in eval mode, float32, eager attention; its directory).
    """
    config = transformers.T5Config(
        **{**T5_DEFAULTS, 'feed_forward_proj': feed_forward, **overrides}
    )
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration._from_config(
        config, attn_implementation='eager', dtype=torch.float32
    )
    if untied_lm_head:
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    # Unit-scale embeddings (T5's own init) keep the d_model**-0.5-rescaled tied logits O(1).
    reinit_(model, seed, embed_std=1.0)
    return model.eval(), _save(model, os.path.join(tmp_path, 't5'), max_shard_size)


def hf_logits_llama(model: transformers.LlamaForCausalLM, tokens_BxT: np.ndarray) -> np.ndarray:
    """float32 logits [B, T, V] of the HF model on int tokens [B, T] (no padding)."""
    with torch.no_grad():
        out = model(input_ids=torch.as_tensor(np.asarray(tokens_BxT), dtype=torch.long))
    return out.logits.float().numpy()


def hf_logits_t5(
    model: transformers.T5ForConditionalGeneration,
    encoder_tokens_BxS: np.ndarray,
    decoder_tokens_BxT: np.ndarray,
    encoder_mask_BxS: np.ndarray | None = None,
) -> np.ndarray:
    """float32 logits [B, T, V] of the HF model (teacher forcing on `decoder_tokens`)."""
    enc = torch.as_tensor(np.asarray(encoder_tokens_BxS), dtype=torch.long)
    mask = None if encoder_mask_BxS is None else torch.as_tensor(np.asarray(encoder_mask_BxS))
    dec = torch.as_tensor(np.asarray(decoder_tokens_BxT), dtype=torch.long)
    with torch.no_grad():
        out = model(input_ids=enc, attention_mask=mask, decoder_input_ids=dec)
    return out.logits.float().numpy()


def _save(model: transformers.PreTrainedModel, hf_dir: str, max_shard_size: str | None) -> str:
    kwargs = {} if max_shard_size is None else {'max_shard_size': max_shard_size}
    model.save_pretrained(hf_dir, **kwargs)
    return hf_dir
