"""Evaluation of a model on HumanEval-X Python→Java (py2java) and HumanEval-X generation.

Run (a model: our pretrained format, a Hugging Face dir, or a training workdir, whose model
comes from the config saved with its checkpoints):

    python -m codellm_jax.evaluation.harness --config=configs/eval_py2java.py:shots=2 \
        --checkpoint=workdirs/llama3_demo --out_dir=workdirs/eval_py2java

or judge a candidates JSONL (`{"task_id", "completion"}` per line; no model needed):

    python -m codellm_jax.evaluation.harness --task=py2java --candidates=cands.jsonl \
        --out_dir=workdirs/eval_py2java

Arguments after the colon: task ('py2java' | 'humaneval-python' | 'humaneval-java'),
shots (few-shot examples from the 10-task pool, translation only), samples (per task;
more than 1 needs strategy=sample), strategy ('greedy' | 'sample'), temperature,
max_new_tokens, size (a configs/llama3.py preset: use this model section instead of the
one saved with the checkpoint). It writes `results.jsonl` and `metrics.json` (pass@k; for py2java also BLEU,
CodeBLEU and exact match of sample 0) to --out_dir and prints the metrics as one JSON line.
"""

import importlib.util
import os

import ml_collections

from codellm_jax import config as config_lib


def _llama3(size: str) -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'llama3.py')
    spec = importlib.util.spec_from_file_location('_eval_llama3', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(f'size={size}')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The ConfigDict for `configs/eval_py2java.py:task=...,shots=...`."""
    args = config_lib.parse_arg(
        arg,
        task='py2java',
        shots=0,
        samples=1,
        strategy='greedy',
        temperature=0.8,
        max_new_tokens=512,
        size='',
    )
    # The model: by default the one saved with the checkpoint (pretrained / HF / workdir
    # config); `size=` (a configs/llama3.py preset) makes this config's model section win.
    cfg = _llama3(args['size'] or 'demo')
    cfg.model_from_config = bool(args['size'])
    cfg.eval = ml_collections.ConfigDict(
        dict(
            task=args['task'],
            shots=args['shots'],
            with_docstring=True,
            num_samples=args['samples'],
            ks=(1, 10, 100),
            workers=2,
            task_ids=(),
        )
    )
    # Fields of codellm_jax.generate.GenerateConfig; empty stop_sequences = the task's own.
    cfg.generate = ml_collections.ConfigDict(
        dict(
            strategy=args['strategy'],
            max_new_tokens=args['max_new_tokens'],
            temperature=args['temperature'],
            top_p=0.95,
            num_samples=args['samples'],
            stop_sequences=(),
            seed=0,
            batch_size=8,
            truncate_prompt='left',
        )
    )
    return cfg
