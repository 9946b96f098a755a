"""Frozen, typed model configurations: what models, interop and decoding take.

`configs/*.py` build these from a ConfigDict via `codellm_jax.config.to_dataclass`;
variants are made with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 RoPE frequency scaling (HF `rope_type='llama3'`)."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """A Llama-3-style decoder-only LM.

    Attributes:
      vocab_size: V.
      d_model: D, the residual width.
      num_layers: L.
      num_heads: H query heads.
      num_kv_heads: K key/value heads; H % K == 0 (K == 1 is MQA, K == H is MHA).
      head_dim: Dh per head (usually D // H).
      d_ff: F, the SwiGLU hidden width.
      max_seq_len: the longest context the model accepts (prompt + generated).
      rope_theta: RoPE base.
      rope_scaling: Llama-3.1 frequency scaling, or None.
      norm_eps: RMSNorm epsilon.
      tie_embeddings: output projection = embedding^T when True.
      param_dtype: dtype parameters are stored in ('float32', 'bfloat16').
      dtype: compute dtype of activations.
      scan_layers: `lax.scan` over layers (fast compile) vs. unrolled; same param layout.
      remat_policy: 'none', 'full', 'dots' (save matmul outputs), 'dots_no_batch'.
      attention_chunk: in the full causal pass, queries go in chunks of this many, each
        attending only to the keys up to its end (`layers.causal_attention_in_chunks`);
        0 = one block. Same result; at T 512 on CPU, 128 took 25% off a training step.
    """

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int = 2048
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    param_dtype: str = 'float32'
    dtype: str = 'float32'
    scan_layers: bool = True
    remat_policy: str = 'none'
    attention_chunk: int = 128

    def __post_init__(self):
        if self.attention_chunk < 0:
            raise ValueError(
                f'attention_chunk={self.attention_chunk} must be >= 0 (0 = one block).'
            )
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f'num_heads={self.num_heads} is not divisible by num_kv_heads='
                f'{self.num_kv_heads}; choose num_kv_heads among the divisors of num_heads.'
            )


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig:
    """A T5 / CodeT5-style encoder-decoder.

    Attributes:
      vocab_size: V.
      d_model: D.
      num_encoder_layers, num_decoder_layers: layer counts.
      num_heads: H; head_dim: Dh (T5 uses d_kv, not necessarily D // H).
      d_ff: F.
      feed_forward: 'relu' (T5 v1.0, CodeT5) or 'gated-gelu' (T5 v1.1).
      relative_attention_num_buckets, relative_attention_max_distance: T5's position bias.
      norm_eps: T5 RMS norm epsilon.
      tie_embeddings: lm head = shared embedding^T, with the d_model**-0.5 rescale.
      max_seq_len: longest input/target the model is used with.
      decoder_start_token_id: first decoder input (T5: pad = 0).
    """

    vocab_size: int
    d_model: int
    num_encoder_layers: int
    num_decoder_layers: int
    num_heads: int
    head_dim: int
    d_ff: int
    feed_forward: str = 'relu'
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    norm_eps: float = 1e-6
    tie_embeddings: bool = True
    max_seq_len: int = 512
    decoder_start_token_id: int = 0
    param_dtype: str = 'float32'
    dtype: str = 'float32'
    scan_layers: bool = True
    remat_policy: str = 'none'

    def __post_init__(self):
        if self.feed_forward not in ('relu', 'gated-gelu'):
            raise ValueError(
                f"feed_forward={self.feed_forward!r}; expected 'relu' or 'gated-gelu'."
            )
