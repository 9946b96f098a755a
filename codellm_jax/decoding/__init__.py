"""Model-agnostic decoding: greedy, sampling and beam search in `lax.while_loop`s.

The model enters only as a `tokens_to_logits(tokens_RxT, positions_RxT, cache) ->
(logits_RxTxV, cache)` callback and its blocked cache (the contract of
`codellm_jax.models.kv_cache`); this package never imports a model.

  * `loop.decode`: greedy / sampled decoding (policies in `sampling`), per-row RNG,
    eos ids, token-level stop sequences, ragged right-padded prompts.
  * `beam.beam_search`: Hugging Face-compatible beam search with 'hf' or 't5x' length penalty.
  * `phases`: both loops run one `lax.while_loop` per cache block, over the filled blocks.
"""

from codellm_jax.decoding.beam import (
    BeamResult,
    BeamState,
    beam_search,
    length_penalty_fn,
    reorder_cache,
)
from codellm_jax.decoding.loop import (
    DecodeResult,
    DecodeState,
    TokensToLogits,
    bucket_length,
    decode,
    ends_with_stop,
    pow2_buckets,
    prefill,
    row_keys,
    stop_sequence_array,
)
from codellm_jax.decoding.phases import cache_blocks
from codellm_jax.decoding.sampling import Greedy, Sampling, make_policy

__all__ = [
    'BeamResult',
    'BeamState',
    'DecodeResult',
    'DecodeState',
    'Greedy',
    'Sampling',
    'TokensToLogits',
    'beam_search',
    'bucket_length',
    'cache_blocks',
    'decode',
    'ends_with_stop',
    'length_penalty_fn',
    'make_policy',
    'pow2_buckets',
    'prefill',
    'reorder_cache',
    'row_keys',
    'stop_sequence_array',
]
