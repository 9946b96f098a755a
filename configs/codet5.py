"""CodeT5 / T5 encoder-decoder presets: tiny (tests), small (CodeT5-small), base (CodeT5-base).

Run (train CodeT5-small; the other sizes change only `size=`):

    python -m codellm_jax.main --config=configs/codet5.py:size=small --workdir=workdirs/codet5_small

Arguments after the colon (comma-separated key=value): size in {tiny, small, base},
scan (scan over layers, default True), remat ('none', 'full', 'dots', 'dots_no_batch'),
dtype (compute dtype), param_dtype. Single values are overridden with e.g.
`--config.model.feed_forward=gated-gelu` (T5 v1.1) or `--config.model.tie_embeddings=False`.

small / base are the exact Salesforce CodeT5-small / CodeT5-base shapes (60,492,288 and
222,882,048 params: relu FFN, tied embeddings with the d_model**-0.5 logit rescale, 32
relative-position buckets up to distance 128, vocab 32100), so their Hugging Face
checkpoints import by reshape.
"""

import ml_collections

from codellm_jax import config as config_lib

# (d_model, num_encoder_layers, num_decoder_layers, num_heads, head_dim, d_ff, vocab, max_len)
_SIZES = {
    'tiny': (64, 2, 2, 4, 16, 128, 256, 128),
    'small': (512, 6, 6, 8, 64, 2048, 32100, 512),
    'base': (768, 12, 12, 12, 64, 3072, 32100, 512),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict for `configs/codet5.py:size=...`."""
    args = config_lib.parse_arg(
        arg, size='tiny', scan=True, remat='none', dtype='float32', param_dtype='float32'
    )
    if args['size'] not in _SIZES:
        raise ValueError(f'Unknown size {args["size"]!r}; expected one of {sorted(_SIZES)}.')
    d_model, enc_layers, dec_layers, heads, head_dim, d_ff, vocab, max_len = _SIZES[args['size']]

    cfg = config_lib.base_config()
    cfg.model_kind = 'encoder_decoder'
    cfg.model = ml_collections.ConfigDict(
        dict(
            vocab_size=vocab,
            d_model=d_model,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            num_heads=heads,
            head_dim=head_dim,
            d_ff=d_ff,
            feed_forward='relu',
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            norm_eps=1e-6,
            tie_embeddings=True,
            max_seq_len=max_len,
            decoder_start_token_id=0,
            param_dtype=args['param_dtype'],
            dtype=args['dtype'],
            scan_layers=bool(args['scan']),
            remat_policy=args['remat'],
        )
    )
    return cfg
