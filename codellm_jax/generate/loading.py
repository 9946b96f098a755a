"""Loading a model for generation, the prompt/output JSONL files, and `run_generate`.

`load_model(path)` takes our pretrained format, a Hugging Face checkpoint directory, or a
training workdir; `run_generate(config, workdir)` is what `python -m codellm_jax.main
--mode=generate` calls.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from codellm_jax import config as config_lib
from codellm_jax.generate.generator import GenerateConfig, Generator, make_generator
from codellm_jax.models import decoder, encoder_decoder

_IO_KEYS = ('prompts', 'output', 'checkpoint')


def gen_config_from(section: ml_collections.ConfigDict | dict) -> GenerateConfig:
    """`config.generate` → `GenerateConfig` (its I/O keys prompts/output/checkpoint ignored)."""
    d = section.to_dict() if isinstance(section, ml_collections.ConfigDict) else dict(section)
    return config_lib.to_dataclass(
        GenerateConfig, {k: v for k, v in d.items() if k not in _IO_KEYS}
    )


def _tokenizer_or_none(path: str | None):
    from codellm_jax.data import tokenizer as tokenizer_lib

    if not path or not os.path.exists(path):
        return None
    try:
        return tokenizer_lib.load_tokenizer(path)
    except FileNotFoundError:
        return None


def _single_device_abstract(tree: Any) -> Any:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _params_from_workdir(config: ml_collections.ConfigDict, path: str) -> tuple[str, Any, Any]:
    from codellm_jax import checkpoint

    model_cfg = config_lib.model_config(config)
    init = decoder.init_params if config.model_kind == 'decoder' else encoder_decoder.init_params
    abstract = _single_device_abstract(
        jax.eval_shape(functools.partial(init, model_cfg), jax.random.key(0))
    )
    return config.model_kind, model_cfg, checkpoint.restore_params(path, abstract)


def load_model(path: str, config: ml_collections.ConfigDict | None = None) -> Generator:
    """A `Generator` from a checkpoint directory.

    `path` is one of: our pretrained format (`model_config.json` + `params/` + `tokenizer/`),
    a Hugging Face checkpoint (`config.json` + safetensors, with its own tokenizer files), or
    a training workdir / its `checkpoints/` / one step of it (the model and tokenizer come
    from `config`, or from the config saved with the checkpoint).
    """
    from codellm_jax.interop import convert, pretrained

    if os.path.isfile(os.path.join(path, pretrained.MODEL_CONFIG_FILE)):
        kind, model_cfg = pretrained.load_model_config(path)
        params = pretrained.load_params(path)
        tok = _tokenizer_or_none(os.path.join(path, pretrained.TOKENIZER_DIR))
        return make_generator(kind, model_cfg, params, tok)
    if os.path.isfile(os.path.join(path, 'config.json')):
        kind, model_cfg, params = convert.load_hf(path)
        params = jax.tree.map(jnp.asarray, params)
        return make_generator(kind, model_cfg, params, _tokenizer_or_none(path))
    if config is None:
        config = _saved_config(path)
    kind, model_cfg, params = _params_from_workdir(config, path)
    tok_path = config.get('data', {}).get('tokenizer_path') if 'data' in config else None
    return make_generator(kind, model_cfg, params, _tokenizer_or_none(tok_path))


def _saved_config(path: str) -> ml_collections.ConfigDict:
    from codellm_jax import checkpoint

    directory = path if os.path.basename(path.rstrip('/')) == 'checkpoints' else None
    directory = directory or os.path.join(path, 'checkpoints')
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f'{path!r} is neither a pretrained dir (model_config.json), a Hugging Face dir '
            '(config.json) nor a training workdir (checkpoints/).'
        )
    ckpt = checkpoint.Checkpointer(directory, checkpoint.CheckpointConfig(async_save=False))
    step = ckpt.latest_step()
    saved = ckpt.config(step) if step is not None else None
    ckpt.close()
    if not saved:
        raise ValueError(f'No saved config with the checkpoint in {directory!r}; pass --config.')
    return ml_collections.ConfigDict(saved)


def read_prompts(path: str) -> list[dict[str, Any]]:
    """JSONL lines with "prompt" (text) or "tokens" (ids); a bare JSON string is a prompt."""
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            row = {'prompt': row} if isinstance(row, str) else row
            if not isinstance(row, dict) or not ('prompt' in row or 'tokens' in row):
                raise ValueError(f'{path}:{n}: expected an object with "prompt" or "tokens".')
            rows.append(row)
    return rows


def generate_jsonl(generator: Generator, gen_cfg: GenerateConfig, prompts: str, output: str) -> int:
    """Reads prompts JSONL, generates, writes output JSONL (input fields + "samples")."""
    rows = read_prompts(prompts)
    inputs = [r['tokens'] if 'tokens' in r else r['prompt'] for r in rows]
    t0 = time.time()

    def progress(done: int, total: int) -> None:
        logging.info('generate: %d/%d prompts, %.1fs', done, total, time.time() - t0)
        print(
            f'\rgenerate: {done}/{total} prompts ({time.time() - t0:.1f}s)',
            end='',
            file=sys.stderr,
            flush=True,
        )

    results = generator.generate(inputs, gen_cfg, progress=progress)
    print(file=sys.stderr)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, 'w') as f:
        for row, samples in zip(rows, results, strict=True):
            out = dict(row)
            out['samples'] = [dataclasses.asdict(s) for s in samples]
            f.write(json.dumps(out) + '\n')
    return len(rows)


def run_generate(config: ml_collections.ConfigDict, workdir: str) -> str:
    """`python -m codellm_jax.main --mode=generate`: generates for `config.generate.prompts`.

    Model: `config.generate.checkpoint` if set (any format `load_model` takes), else the
    latest checkpoint in `workdir`, else `config.checkpoint.init_from_pretrained`. Output:
    `config.generate.output` or `<workdir>/generate/samples.jsonl`. Returns the output path.
    """
    section = config.generate
    prompts = section.get('prompts', '')
    if not prompts:
        raise ValueError('Set --config.generate.prompts=PATH.jsonl (one {"prompt": ...} per line).')
    source = section.get('checkpoint', '')
    if not source:
        has_ckpt = os.path.isdir(os.path.join(workdir, 'checkpoints')) and any(
            d.isdigit() for d in os.listdir(os.path.join(workdir, 'checkpoints'))
        )
        source = workdir if has_ckpt else config.get('checkpoint', {}).get('init_from_pretrained')
    if not source:
        raise ValueError(
            f'No model to generate with: {workdir!r} has no checkpoint; set '
            '--config.generate.checkpoint or --config.checkpoint.init_from_pretrained.'
        )
    generator = load_model(source, config)
    output = section.get('output', '') or os.path.join(workdir, 'generate', 'samples.jsonl')
    n = generate_jsonl(generator, gen_config_from(section), prompts, output)
    logging.info('Wrote %d prompts to %s', n, output)
    return output
