r"""Generation: a model and its params become a `tokens_to_logits` callback; prompts in, text out.

  gen = make_generator('decoder', model_cfg, params, tokenizer)
  samples = gen.generate(['def fib(n):'], GenerateConfig(strategy='sample', top_p=0.95))
  # or from a checkpoint: load_model(dir).generate(...); the command:
  python -m codellm_jax.generate --checkpoint=DIR --prompts=in.jsonl --output=out.jsonl

See `generator` for what happens where (buckets, stops, RNG), `loading` for loading and JSONL,
`__main__` for the command's flags.
"""

from codellm_jax.generate.generator import (
    GenerateConfig,
    Generator,
    Sample,
    estimate_memory_bytes,
    make_generator,
)
from codellm_jax.generate.loading import (
    gen_config_from,
    generate_jsonl,
    load_model,
    read_prompts,
    run_generate,
)

__all__ = [
    'GenerateConfig',
    'Generator',
    'Sample',
    'estimate_memory_bytes',
    'gen_config_from',
    'generate_jsonl',
    'load_model',
    'make_generator',
    'read_prompts',
    'run_generate',
]
