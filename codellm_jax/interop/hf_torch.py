"""Our decoder's params as an in-memory Hugging Face PyTorch model (no files written).

For side-by-side runs of the same weights in both frameworks: the speed benchmarks'
peer and parity checks. torch and transformers are imported when called, so importing
`codellm_jax.interop` never needs them.

  model = hf_torch.llama_for_causal_lm(cfg, params)   # eval mode, float32 by default
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from codellm_jax.interop import hf_llama
from codellm_jax.models.model_config import DecoderConfig


def llama_for_causal_lm(
    cfg: DecoderConfig,
    params: Mapping[str, Any],
    attn_implementation: str = 'sdpa',
    dtype: str = 'float32',
) -> Any:
    """A `transformers.LlamaForCausalLM` (eval mode) holding `params` (stacked layout).

    Raises ValueError naming the params that do not match `cfg`, and RuntimeError naming
    any HF weight left unset (only the rotary buffers HF computes itself may be).
    """
    import torch
    import transformers

    hf_cfg = transformers.LlamaConfig(**hf_llama.config_to_hf(cfg))
    model = transformers.LlamaForCausalLM._from_config(
        hf_cfg, attn_implementation=attn_implementation, dtype=getattr(torch, dtype)
    )
    tensors = {
        name: torch.from_numpy(np.array(value))
        for name, value in hf_llama.to_hf(cfg, params).items()
    }
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [name for name in missing if 'rotary' not in name]
    if missing or unexpected:
        raise RuntimeError(f'weights did not map: missing={missing} unexpected={unexpected}')
    return model.eval()
