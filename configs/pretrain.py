r"""Pretraining: Llama-3-style decoder (causal LM / fill-in-the-middle) or T5 (span corruption).

    python -m codellm_jax.main --config=configs/pretrain.py:size=small \
        --workdir=workdirs/pretrain_small
    python -m codellm_jax.main --config=configs/pretrain.py:size=small,task=fim --workdir=...
    python -m codellm_jax.main --config=configs/pretrain.py:size=t5_small --workdir=...

Sizes: 'tiny' (smoke test, seconds on CPU), 'small' (~40M, one GPU), '1b', '8b'
(Llama-3-8B shapes, needs a multi-device mesh: e.g. --config.mesh.shape='(1,-1,1)' FSDP);
't5_small' / 't5_base' (CodeT5 shapes, Adafactor + rsqrt as in T5). Each step logs loss,
perplexity, accuracy, grad norm, learning rate, tokens/s and MFU; checkpoints go to
WORKDIR/checkpoints and a rerun resumes.
"""

from codellm_jax import config as config_lib

DECODERS = {
    # name: (d_model, layers, heads, kv_heads, d_ff, vocab, seq_len, batch)
    'tiny': (64, 2, 4, 2, 128, 8192, 64, 8),
    'small': (512, 8, 8, 4, 1408, 8192, 1024, 32),
    '1b': (2048, 16, 32, 8, 8192, 128256, 2048, 256),
    '8b': (4096, 32, 32, 8, 14336, 128256, 8192, 256),
}
T5S = {
    # name: (d_model, enc layers, dec layers, heads, head_dim, d_ff, vocab, seq_len, batch)
    't5_small': (512, 6, 6, 8, 64, 2048, 32128, 512, 32),
    't5_base': (768, 12, 12, 12, 64, 3072, 32128, 512, 64),
}


def get_config(arg=None):
    args = config_lib.parse_arg(arg, size='tiny', task='')
    size = args['size']
    cfg = config_lib.base_config()
    cfg.mode = 'pretrain'
    if size in DECODERS:
        d, n_layers, h, kv, ff, vocab, seq, batch = DECODERS[size]
        cfg.model_kind = 'decoder'
        cfg.model.vocab_size = vocab
        cfg.model.d_model = d
        cfg.model.num_layers = n_layers
        cfg.model.num_heads = h
        cfg.model.num_kv_heads = kv
        cfg.model.head_dim = d // h
        cfg.model.d_ff = ff
        cfg.model.max_seq_len = seq
        cfg.model.tie_embeddings = size in ('tiny', 'small')
        cfg.data.task = args['task'] or 'lm'
        cfg.optimizer.name = 'adamw'
        cfg.optimizer.learning_rate = 3e-4 if size in ('1b', '8b') else 1e-3
    elif size in T5S:
        d, enc, dec, h, dh, ff, vocab, seq, batch = T5S[size]
        cfg.model_kind = 'encoder_decoder'
        cfg.model.vocab_size = vocab
        cfg.model.d_model = d
        cfg.model.num_encoder_layers = enc
        cfg.model.num_decoder_layers = dec
        cfg.model.num_heads = h
        cfg.model.head_dim = dh
        cfg.model.d_ff = ff
        cfg.model.max_seq_len = seq
        cfg.data.task = args['task'] or 'span_corruption'
        # The T5 recipe: Adafactor, constant 1e-2 for 10k steps then rsqrt decay.
        cfg.optimizer.name = 'adafactor'
        cfg.optimizer.learning_rate = 1e-2
        cfg.optimizer.decay = 'rsqrt'
        cfg.optimizer.warmup_steps = 10000
        cfg.optimizer.init_lr_fraction = 1.0
        cfg.optimizer.weight_decay = 0.0
        cfg.optimizer.grad_clip_norm = 0.0
    else:
        raise ValueError(f'size={size!r}; expected one of {sorted(DECODERS) + sorted(T5S)}.')
    if size in ('1b', '8b'):
        cfg.model.param_dtype = 'float32'
        cfg.model.dtype = 'bfloat16'
        cfg.model.remat_policy = 'dots'
    cfg.train.seq_len = seq
    cfg.train.batch_size = batch
    cfg.train.num_steps = 100 if size == 'tiny' else 100000
    cfg.optimizer.total_steps = cfg.train.num_steps
    if cfg.optimizer.name == 'adamw':
        cfg.optimizer.warmup_steps = min(2000, cfg.train.num_steps // 10)
    cfg.train.log_every = 10 if size == 'tiny' else 100
    cfg.eval.every_steps = 50 if size == 'tiny' else 2000
    cfg.eval.batch_size = batch
    cfg.checkpoint.every_steps = 50 if size == 'tiny' else 2000
    return cfg
