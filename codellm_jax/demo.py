r"""`make demo`: build data, pretrain a small decoder, finetune it (SFT), show completions.

    python -m codellm_jax.demo --workdir=workdirs/demo

1. Builds the default tokenizer (`artifacts/tokenizer/code8k`) and the tfds datasets
   (`code_corpus`, `instructions` in `artifacts/tensorflow_datasets`) unless present.
2. Pretrains `configs/demo.py` (causal LM on the Python stdlib) in `<workdir>/pretrain`.
3. Finetunes it with SFT on the derived instructions (`configs/demo.py:stage=sft`, params
   from the pretraining checkpoint) in `<workdir>/sft`.
4. Prints validation loss before/after each stage and greedy completions of a few prompts
   (via `codellm_jax.generate`) from the pretrained and the finetuned model.

Rerunning resumes/skips finished stages (their checkpoints are in the workdir). Budget: about
10-15 minutes on 2 CPU cores; `--pretrain_steps` / `--sft_steps` change the lengths.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string('workdir', 'workdirs/demo', 'Where the two runs go.')
_PRETRAIN_STEPS = flags.DEFINE_integer('pretrain_steps', 0, '0 = the config default.')
_SFT_STEPS = flags.DEFINE_integer('sft_steps', 0, '0 = the config default.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 48, 'Tokens generated per prompt.')

CODE_PROMPTS = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    'import os\n\n\ndef list_python_files(directory):\n',
    'class Stack:\n    def __init__(self):\n',
)
INSTRUCTIONS = (
    ('def is_palindrome(s):', 'Return True if the string s reads the same in both directions.'),
    ('def count_words(text):', 'Return a dict mapping each word of text to its count.'),
)


def _sft_prompt(signature: str, doc: str) -> str:
    """The prompt format of the derived `instructions` dataset (`data.derived`)."""
    return (
        f'Write a Python function with this signature:\n{signature}\n\n'
        f'It should do the following:\n{doc}\n'
    )


def _root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_data(config) -> None:
    """Builds the tokenizer and the two datasets the demo reads, when missing."""
    from codellm_jax.data import tfds_builders

    tok_dir = config.data.tokenizer_path
    if not os.path.isdir(tok_dir) or not os.listdir(tok_dir):
        _run_module('codellm_jax.data.build_tokenizer', f'--out={tok_dir}', '--vocab_size=8192')
    needed = []
    for name in ('code_corpus', 'instructions'):
        try:
            tfds_builders.dataset_dir(config.data.data_dir, name)
        except FileNotFoundError:
            needed.append(name)
    if needed:
        _run_module(
            'codellm_jax.data.build_datasets',
            f'--data_dir={config.data.data_dir}',
            f'--datasets={",".join(needed)}',
        )


def _run_module(module: str, *args: str) -> None:
    print(f'$ python -m {module} {" ".join(args)}', flush=True)
    start = time.time()
    subprocess.run([sys.executable, '-m', module, *args], check=True, cwd=os.getcwd())
    print(f'  done in {time.time() - start:.0f}s', flush=True)


def _config(stage: str, steps: int, init_from: str = ''):
    from codellm_jax import config as config_lib

    arg = f'stage={stage},steps={steps}'
    cfg = config_lib.load_config(os.path.join(_root(), 'configs', 'demo.py') + ':' + arg)
    cfg.eval.at_start = True
    if init_from:
        cfg.checkpoint.init_from = init_from
    return cfg


def _show(title: str, model_cfg, params, tokenizer, prompts, max_new: int) -> None:
    from codellm_jax.generate import GenerateConfig, make_generator

    gen = make_generator('decoder', model_cfg, params, tokenizer)
    gen_cfg = GenerateConfig(strategy='greedy', max_new_tokens=max_new, add_bos=False)
    print(f'\n=== {title} (greedy, {max_new} new tokens) ===', flush=True)
    for prompt, samples in zip(prompts, gen.generate(list(prompts), gen_cfg), strict=True):
        print('--- prompt:\n' + prompt.rstrip('\n'))
        print('--- completion:\n' + samples[0].text.rstrip() + '\n', flush=True)


def _loss_line(name: str, result: dict) -> str:
    before = result.get('eval_start', {}).get('loss', float('nan'))
    after = result['eval'].get('loss', float('nan'))
    return f'{name}: validation loss {before:.3f} -> {after:.3f} (step {result["step"]})'


def main(argv):
    del argv
    from codellm_jax import trainer
    from codellm_jax.data import tokenizer as tok_lib

    start = time.time()
    workdir = os.path.abspath(_WORKDIR.value)
    pre_dir, sft_dir = os.path.join(workdir, 'pretrain'), os.path.join(workdir, 'sft')
    pre_cfg = _config('pretrain', _PRETRAIN_STEPS.value)
    ensure_data(pre_cfg)
    print(f'\n### Pretraining (causal LM on the stdlib corpus) in {pre_dir}', flush=True)
    pre = trainer.run(pre_cfg, pre_dir)
    print(f'\n### SFT (derived instructions) in {sft_dir}', flush=True)
    sft = trainer.run(_config('sft', _SFT_STEPS.value, init_from=pre_dir), sft_dir)

    from codellm_jax import config as config_lib

    model_cfg = config_lib.model_config(pre_cfg)
    tok = tok_lib.load_tokenizer(pre_cfg.data.tokenizer_path)
    _show(
        'Pretrained model: code completion',
        model_cfg,
        pre['state'].params,
        tok,
        CODE_PROMPTS,
        _MAX_NEW.value,
    )
    prompts = [_sft_prompt(s, d) for s, d in INSTRUCTIONS]
    _show('After SFT: instructions', model_cfg, sft['state'].params, tok, prompts, _MAX_NEW.value)
    print('\n=== Summary ===')
    print(_loss_line('pretrain (code_corpus)', pre))
    print(_loss_line('sft (instructions)', sft))
    print(f'total time {time.time() - start:.0f}s; workdirs: {pre_dir}, {sft_dir}')


if __name__ == '__main__':
    app.run(main)
