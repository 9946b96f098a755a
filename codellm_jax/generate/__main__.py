r"""`python -m codellm_jax.generate --checkpoint=DIR --prompts=in.jsonl --output=out.jsonl`.

  python -m codellm_jax.generate --checkpoint=/ckpt/llama_jax --prompts=in.jsonl \
      --output=out.jsonl --strategy=sample --top_p=0.95 --num_samples=10 --max_new_tokens=256
  python -m codellm_jax.generate --checkpoint=/ckpt/codet5_hf --prompts=in.jsonl \
      --output=out.jsonl --strategy=beam --num_beams=4 --num_return_sequences=2
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from absl import app, flags

from codellm_jax.generate.generator import GenerateConfig
from codellm_jax.generate.loading import generate_jsonl, load_model


def _main(argv: Sequence[str]) -> None:
    del argv
    f = flags.FLAGS
    fields = {x.name: x.default for x in dataclasses.fields(GenerateConfig)}
    kwargs = {}
    for name in fields:
        value = getattr(f, name)
        if name == 'stop_sequences':
            value = tuple(json.loads(value)) if value else ()
        elif name == 'eos_ids':
            value = tuple(int(x) for x in value.split(',')) if value else None
        elif name == 'early_stopping':
            value = {'true': True, 'false': False, 'never': 'never'}[value.lower()]
        kwargs[name] = value
    gen_cfg = GenerateConfig(**kwargs)
    generator = load_model(f.checkpoint)
    n = generate_jsonl(generator, gen_cfg, f.prompts, f.output)
    print(f'Wrote {n} prompts to {f.output}')


def _define_flags() -> None:
    flags.DEFINE_string('checkpoint', None, 'Pretrained / Hugging Face dir or training workdir.')
    flags.DEFINE_string('prompts', None, 'Input JSONL ("prompt" text or "tokens" ids per line).')
    flags.DEFINE_string('output', None, 'Output JSONL.')
    d = GenerateConfig()
    flags.DEFINE_enum('strategy', d.strategy, ['greedy', 'beam', 'sample'], 'Decoding strategy.')
    for name in (
        'max_new_tokens',
        'num_beams',
        'num_return_sequences',
        'top_k',
        'num_samples',
        'seed',
        'batch_size',
        'cache_block',
    ):
        flags.DEFINE_integer(name, getattr(d, name), f'GenerateConfig.{name}.')
    for name in ('length_penalty', 'temperature', 'top_p', 'min_p', 'max_memory_gb'):
        flags.DEFINE_float(name, getattr(d, name), f'GenerateConfig.{name}.')
    for name in ('add_bos', 'add_eos_to_encoder'):
        flags.DEFINE_boolean(name, getattr(d, name), f'GenerateConfig.{name}.')
    flags.DEFINE_enum('length_penalty_style', d.length_penalty_style, ['hf', 't5x'], 'hf | t5x.')
    flags.DEFINE_string('early_stopping', 'false', 'true | false | never (beam search).')
    flags.DEFINE_string('stop_sequences', '', 'JSON list of stop strings, e.g. ["\\ndef "].')
    flags.DEFINE_string('eos_ids', '', 'Comma-separated eos ids (default: the tokenizer eos).')
    flags.DEFINE_enum('truncate_prompt', d.truncate_prompt, ['error', 'left'], 'Long prompts.')
    flags.mark_flags_as_required(['checkpoint', 'prompts', 'output'])


if __name__ == '__main__':
    _define_flags()
    app.run(_main)
