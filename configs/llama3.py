"""Llama-3-style decoder presets: tiny (tests), demo (~26M params, CPU), 8b and 70b (Llama-3.1).

Run (train the CPU demo model; the other sizes change only `size=`):

    python -m codellm_jax.main --config=configs/llama3.py:size=demo --workdir=workdirs/llama3_demo

Arguments after the colon (comma-separated key=value): size in {tiny, demo, 8b, 70b},
scan (scan over layers, default True), remat ('none', 'full', 'dots', 'dots_no_batch'),
dtype (compute dtype), param_dtype. Single values are overridden with e.g.
`--config.model.max_seq_len=4096` or `--config.mesh.shape='(1,-1,8)'`.

8b / 70b are the exact Llama-3.1 8B / 70B shapes (8,030,261,248 and 70,553,706,496 params:
untied, rope theta 500000, Llama-3.1 RoPE scaling factor 8, context up to 131072), so
Hugging Face checkpoints import into them.
"""

import ml_collections

from codellm_jax import config as config_lib

# (d_model, num_layers, num_heads, num_kv_heads, d_ff, vocab_size, max_seq_len)
_SIZES = {
    'tiny': (64, 2, 4, 2, 128, 256, 128),
    'demo': (512, 6, 8, 4, 1408, 8192, 512),
    '8b': (4096, 32, 32, 8, 14336, 128256, 131072),
    '70b': (8192, 80, 64, 8, 28672, 128256, 131072),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict for `configs/llama3.py:size=...`."""
    args = config_lib.parse_arg(
        arg, size='tiny', scan=True, remat='none', dtype='float32', param_dtype='float32'
    )
    if args['size'] not in _SIZES:
        raise ValueError(f'Unknown size {args["size"]!r}; expected one of {sorted(_SIZES)}.')
    d_model, num_layers, num_heads, num_kv_heads, d_ff, vocab, max_len = _SIZES[args['size']]
    llama31 = args['size'] in ('8b', '70b')

    cfg = config_lib.base_config()
    cfg.model_kind = 'decoder'
    cfg.model = ml_collections.ConfigDict(
        dict(
            vocab_size=vocab,
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            head_dim=d_model // num_heads,
            d_ff=d_ff,
            max_seq_len=max_len,
            rope_theta=500000.0 if llama31 else 10000.0,
            norm_eps=1e-5,
            tie_embeddings=False,
            param_dtype=args['param_dtype'],
            dtype=args['dtype'],
            scan_layers=bool(args['scan']),
            remat_policy=args['remat'],
            attention_chunk=128,
        )
    )
    if llama31:
        cfg.model.rope_scaling = ml_collections.ConfigDict(
            dict(
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            )
        )
    return cfg
