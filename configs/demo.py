r"""The `make demo` model: a small Llama-style decoder on the embedded code corpus.

Pretraining (causal LM on the Python stdlib sources), then SFT on the derived instructions:

    python -m codellm_jax.main --config=configs/demo.py --workdir=workdirs/demo/pretrain
    python -m codellm_jax.main --config=configs/demo.py:stage=sft \
        --workdir=workdirs/demo/sft --config.checkpoint.init_from=workdirs/demo/pretrain

Expected: the validation loss falls from ~9.5 to ~4.8 in pretraining (220 steps, ~450k
tokens) and from ~5.4 to ~4.8 in SFT (80 steps); ~2,350 tokens/s on 2 idle cores. `make demo`
runs both and prints greedy completions (see `codellm_jax.demo`). `steps=N` shortens/lengthens
a stage.
"""

from codellm_jax import config as config_lib

STAGES = ('pretrain', 'sft')


def get_config(arg=None):
    args = config_lib.parse_arg(arg, stage='pretrain', steps=0)
    if args['stage'] not in STAGES:
        raise ValueError(f'stage={args["stage"]!r}; expected one of {STAGES}.')
    cfg = config_lib.base_config()
    cfg.model_kind = 'decoder'
    cfg.model.vocab_size = 8192
    cfg.model.d_model = 256
    cfg.model.num_layers = 4
    cfg.model.num_heads = 4
    cfg.model.num_kv_heads = 2
    cfg.model.head_dim = 64
    cfg.model.d_ff = 704
    cfg.model.max_seq_len = 512
    cfg.model.rope_theta = 10000.0
    cfg.model.tie_embeddings = True
    cfg.mesh.shape = (1, -1, 1)

    cfg.train.seq_len = 256
    cfg.train.batch_size = 8
    cfg.train.log_every = 10
    cfg.eval.batch_size = 8
    cfg.eval.num_batches = 8
    cfg.optimizer.weight_decay = 0.01
    cfg.optimizer.grad_clip_norm = 1.0
    cfg.checkpoint.keep = 2

    if args['stage'] == 'pretrain':
        cfg.mode = 'pretrain'
        cfg.data.task = 'lm'
        cfg.data.dataset = 'code_corpus'
        cfg.data.languages = ('python',)
        cfg.train.num_steps = args['steps'] or 220
        # Packing puts a long file on consecutive rows: mix rows over 256 batches so that
        # one file does not fill whole batches.
        cfg.data.row_shuffle_window = 2048
        cfg.optimizer.learning_rate = 1e-3
        cfg.optimizer.warmup_steps = 30
    else:
        cfg.mode = 'sft'
        cfg.data.task = 'sft'
        cfg.data.dataset = 'instructions'
        cfg.train.num_steps = args['steps'] or 80
        cfg.optimizer.learning_rate = 1e-3
        cfg.optimizer.warmup_steps = 10
    cfg.optimizer.total_steps = cfg.train.num_steps
    cfg.eval.every_steps = cfg.train.num_steps
    cfg.checkpoint.every_steps = 50
    return cfg
