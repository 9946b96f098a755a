"""The tiny model sizes the tests share: change a size here, not in each test file.

Both decoders use GQA (4 query heads over 2 kv heads). Tests add what they need on top
(`max_seq_len`, `rope_theta`, T5 bucket counts) as keyword overrides.
"""

from codellm_jax.models.model_config import DecoderConfig, EncoderDecoderConfig

# vocab 64, width 32: for loops that compile many programs (training, generation).
SMALL_DECODER = dict(
    vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, d_ff=64
)
SMALL_ENCODER_DECODER = dict(
    vocab_size=64, d_model=32, num_encoder_layers=2, num_decoder_layers=2, num_heads=4,
    head_dim=8, d_ff=64,
)  # fmt: skip
# vocab 256, width 64: for model-level oracles (numerics, sharding specs).
DECODER = dict(
    vocab_size=256, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128
)


def decoder_config(fields: dict = SMALL_DECODER, **overrides) -> DecoderConfig:
    return DecoderConfig(**{**fields, **overrides})


def encoder_decoder_config(**overrides) -> EncoderDecoderConfig:
    return EncoderDecoderConfig(**{**SMALL_ENCODER_DECODER, **overrides})
