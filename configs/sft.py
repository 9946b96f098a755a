r"""Supervised finetuning (loss on the response only) from a pretraining run or a converted
Hugging Face checkpoint.

From one of our pretraining runs (same `size` as there):

    python -m codellm_jax.main --config=configs/sft.py:size=small --workdir=workdirs/sft \
        --config.checkpoint.init_from=workdirs/pretrain_small

From a Hugging Face model converted with `python -m codellm_jax.interop.convert` (the model
config and tokenizer are taken from the converted directory):

    python -m codellm_jax.main --config=configs/sft.py:size=pretrained \
        --workdir=workdirs/sft_hf --config.checkpoint.init_from_pretrained=artifacts/llama_conv \
        --config.data.tokenizer_path=artifacts/llama_conv/tokenizer

Decoders train on `data.task='sft'` (the `instructions` dataset); T5 sizes on 'seq2seq'.
"""

import os

import ml_collections

from codellm_jax import config as config_lib


def _pretrain_config(size: str) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pretrain.py')
    cfg = config_lib.load_config(f'{path}:size={size}')
    cfg.unlock()
    return cfg


def get_config(arg=None):
    args = config_lib.parse_arg(arg, size='tiny')
    if args['size'] == 'pretrained':
        cfg = _pretrain_config('tiny')
        cfg.model = ml_collections.ConfigDict()  # taken from init_from_pretrained
    else:
        cfg = _pretrain_config(args['size'])
    cfg.mode = 'sft'
    cfg.data.dataset = 'instructions'
    cfg.data.task = 'seq2seq' if cfg.model_kind == 'encoder_decoder' else 'sft'
    cfg.optimizer.name = 'adamw'
    cfg.optimizer.decay = 'cosine'
    cfg.optimizer.learning_rate = 1e-4 if args['size'] in ('1b', '8b', 'pretrained') else 5e-4
    cfg.optimizer.init_lr_fraction = 0.0
    cfg.optimizer.weight_decay = 0.0
    cfg.optimizer.grad_clip_norm = 1.0
    cfg.train.num_steps = 50 if args['size'] == 'tiny' else 2000
    cfg.optimizer.total_steps = cfg.train.num_steps
    cfg.optimizer.warmup_steps = max(cfg.train.num_steps // 20, 1)
    return cfg
