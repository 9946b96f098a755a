"""The evaluation command: candidates (a JSONL file or a model) → judged → pass@k, BLEU, ...

    python -m codellm_jax.evaluation.harness --task=py2java --candidates=cands.jsonl \
        --out_dir=workdirs/eval_py2java
    python -m codellm_jax.evaluation.harness --task=py2java --checkpoint=workdirs/run/checkpoints \
        --config=configs/eval_py2java.py:shots=2 --out_dir=workdirs/eval_py2java

Tasks: 'py2java' (HumanEval-X Python→Java, 154 tasks; few-shot examples only from its
10-task few-shot pool), 'humaneval-python', 'humaneval-java' (HumanEval-X generation, 164).
A candidates file has one `{"task_id": ..., "completion": ...}` per line (several lines per
task = several samples). A model is any `generate_fn(prompts, num_samples) -> texts`;
`--checkpoint` builds one with `codellm_jax.generate`.

Writes `<out_dir>/results.jsonl` (one line per sample: status, message, extracted code) and
`<out_dir>/metrics.json`, and prints the metrics as one JSON line. Every result carries the
sandbox flags (`network_isolated`, `unprivileged`); a weakened sandbox is also warned about.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from codellm_jax import prompting
from codellm_jax.data import jsonl
from codellm_jax.evaluation import java_exec, metrics, programs, python_exec, sandbox
from codellm_jax.evaluation.tasks import Task, TaskSet, load_task_set

GenerateFn = Callable[[list[str], int], list[list[str]]]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Attributes:
    task: 'py2java' | 'humaneval-python' | 'humaneval-java'.
    shots: few-shot examples in translation prompts (from the few-shot pool only).
    with_docstring: translation prompts show the Python docstring.
    num_samples: samples per task from the model.
    ks: pass@k values reported (those with k <= samples per task).
    workers: parallel sandboxes.
    task_ids: evaluate only these tasks (empty = all).
    """

    task: str = 'py2java'
    shots: int = 0
    with_docstring: bool = True
    num_samples: int = 1
    ks: tuple[int, ...] = (1, 10, 100)
    workers: int = 2
    task_ids: tuple[str, ...] = ()


def read_candidates(path: str | Path, task_set: TaskSet) -> dict[str, list[str]]:
    """`{task_id: [completion, ...]}` from a JSONL file; bad lines are errors naming the line."""
    out: dict[str, list[str]] = {}
    for lineno, row in jsonl.read_jsonl_lines(str(path), ('task_id', 'completion'), strings=True):
        try:
            task_set.by_id(row['task_id'])
        except KeyError as e:
            raise ValueError(f'{path}:{lineno}: {e.args[0]}') from e
        out.setdefault(row['task_id'], []).append(row['completion'])
    if not out:
        raise ValueError(f'{path}: no candidates.')
    return out


def build_prompt(task: Task, task_set: TaskSet, cfg: EvalConfig) -> str:
    """The prompt for `task`: translation (k-shot from the pool) or generation."""
    if task_set.kind == 'translation':
        if cfg.shots > len(task_set.fewshot):
            raise ValueError(
                f'shots={cfg.shots} but the few-shot pool has {len(task_set.fewshot)}.'
            )
        shots = task_set.fewshot[: cfg.shots]
        return prompting.translation_prompt(task, shots, with_docstring=cfg.with_docstring)
    return prompting.generation_prompt(task)


def generate_candidates(
    tasks: Sequence[Task], task_set: TaskSet, cfg: EvalConfig, generate_fn: GenerateFn
) -> dict[str, list[str]]:
    """Asks `generate_fn` for `cfg.num_samples` answers per task."""
    prompts = [build_prompt(t, task_set, cfg) for t in tasks]
    answers = generate_fn(prompts, cfg.num_samples)
    if len(answers) != len(prompts):
        raise ValueError(f'generate_fn returned {len(answers)} lists for {len(prompts)} prompts.')
    return {t.task_id: list(a) for t, a in zip(tasks, answers, strict=True)}


def check_toolchain(language: str) -> None:
    """Fails early, naming the missing tool, before any generation is spent."""
    if language == 'java':
        java_exec.check_toolchain()
    else:
        python_exec.find_interpreter()


def judge(
    tasks: Sequence[Task],
    candidates: dict[str, list[str]],
    *,
    kind: str,
    workers: int = 2,
    caps: sandbox.Capabilities | None = None,
) -> list[dict]:
    """One record per sample: task_id, sample, status, passed, message, kind, code, program."""
    caps = caps or sandbox.probe()
    records, to_run = [], []
    for task in tasks:
        for s, answer in enumerate(candidates.get(task.task_id, [])):
            ex = prompting.extract_code(answer, task, kind)
            rec = dict(task_id=task.task_id, sample=s, kind=ex.kind, code=ex.code)
            if ex.kind in ('empty', 'not_code'):
                what = 'empty candidate' if ex.kind == 'empty' else 'no code in candidate'
                rec.update(status=ex.kind, passed=False, message=what, program='')
            else:
                rec['program'] = programs.build_program(task, ex)
                to_run.append((len(records), task.language))
            records.append(rec)
    for language, judge_fn in (('java', java_exec.judge), ('python', python_exec.judge)):
        idx = [i for i, lang in to_run if lang == language]
        if not idx:
            continue
        verdicts = judge_fn([records[i]['program'] for i in idx], workers=workers, caps=caps)
        for i, v in zip(idx, verdicts, strict=True):
            status = v.status
            if language == 'python' and status == 'failed' and 'SyntaxError' in v.message:
                status = 'syntax_error'
            records[i].update(status=status, passed=v.passed, message=v.message[-500:])
    return records


def hypothesis_code(task: Task, record: dict) -> str:
    """The whole candidate program (without the test) for BLEU / CodeBLEU / exact match."""
    if record['kind'] == 'completion':
        return task.declaration + record['code']
    return record['code']


def compute_metrics(
    tasks: Sequence[Task], records: Sequence[dict], ks: Sequence[int], text_metrics: bool
) -> dict:
    """pass@k over tasks with samples; BLEU/CodeBLEU/EM of sample 0 against the reference."""
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r['task_id'], []).append(r)
    judged = [t for t in tasks if t.task_id in by_task]
    n = [len(by_task[t.task_id]) for t in judged]
    c = [sum(r['passed'] for r in by_task[t.task_id]) for t in judged]
    out: dict = {'num_tasks': len(judged), 'num_samples': sum(n)}
    out.update(metrics.mean_pass_at_k(c, n, ks))
    statuses: dict[str, int] = {}
    for r in records:
        statuses[r['status']] = statuses.get(r['status'], 0) + 1
    out['statuses'] = dict(sorted(statuses.items()))
    if text_metrics and judged:
        hyps = [hypothesis_code(t, by_task[t.task_id][0]) for t in judged]
        refs = [t.reference_code for t in judged]
        out['bleu'] = round(metrics.bleu(hyps, refs), 4)
        code_bleu = metrics.codebleu(hyps, refs, lang=judged[0].language)['codebleu']
        out['codebleu'] = round(code_bleu, 4)
        out['exact_match'] = round(metrics.exact_match(hyps, refs), 4)
    return out


def evaluate(
    cfg: EvalConfig,
    *,
    candidates: dict[str, list[str]] | None = None,
    generate_fn: GenerateFn | None = None,
    data_dir: str | None = None,
    out_dir: str | None = None,
) -> dict:
    """Evaluates `candidates` or a model's `generate_fn` on `cfg.task`; returns the metrics."""
    if (candidates is None) == (generate_fn is None):
        raise ValueError('Pass exactly one of candidates (a JSONL file) or generate_fn (a model).')
    task_set = load_task_set(cfg.task, data_dir)
    check_toolchain(task_set.language)
    caps = sandbox.probe()
    tasks = list(task_set.tasks)
    if cfg.task_ids:
        tasks = [task_set.by_id(i) for i in cfg.task_ids]
    elif candidates is not None:
        for task_id in candidates:
            task_set.by_id(task_id)  # an unknown id is an error naming it
        tasks = [t for t in tasks if t.task_id in candidates]
        if len(tasks) < len(task_set.tasks):
            logging.warning(
                'Candidates cover %d of %d tasks of %s; metrics are over those only.',
                len(tasks),
                len(task_set.tasks),
                task_set.name,
            )
    start = time.monotonic()
    if generate_fn is not None:
        candidates = generate_candidates(tasks, task_set, cfg, generate_fn)
    gen_s = time.monotonic() - start
    records = judge(tasks, candidates, kind=task_set.kind, workers=cfg.workers, caps=caps)
    result = compute_metrics(tasks, records, cfg.ks, text_metrics=task_set.kind == 'translation')
    result.update(
        task=cfg.task,
        num_tasks_in_set=len(task_set.tasks),
        generate_s=round(gen_s, 2),
        judge_s=round(time.monotonic() - start - gen_s, 2),
        network_isolated=caps.network_isolated,
        unprivileged=caps.unprivileged,
        sandbox_notes=list(caps.notes),
    )
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, 'results.jsonl'), 'w') as f:
            for r in records:
                f.write(json.dumps(r) + '\n')
        with open(os.path.join(out_dir, 'metrics.json'), 'w') as f:
            json.dump(result, f, indent=2)
    return result


def make_generate_fn(generator, gen_cfg) -> GenerateFn:
    """Adapts a `codellm_jax.generate.Generator` + `GenerateConfig` to a `GenerateFn`.

    `num_samples` sets `num_samples` (sampling) or `num_return_sequences` (beam); greedy
    decoding gives one answer per prompt, so it needs num_samples == 1.
    """

    def generate_fn(prompts: list[str], num_samples: int) -> list[list[str]]:
        cfg = gen_cfg
        if cfg.strategy == 'sample':
            cfg = dataclasses.replace(cfg, num_samples=num_samples)
        elif cfg.strategy == 'beam':
            cfg = dataclasses.replace(cfg, num_return_sequences=num_samples)
        elif num_samples != 1:
            raise ValueError(f'Greedy decoding gives 1 sample per task, not {num_samples}.')
        out = generator.generate(list(prompts), cfg)
        return [[s.text for s in per_prompt][:num_samples] for per_prompt in out]

    return generate_fn


def load_config(spec: str):
    """`path/to/config.py[:arg]` → its `get_config(arg)` ConfigDict."""
    import importlib.util

    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Config file {path} not found (from --config={spec}).')
    module_spec = importlib.util.spec_from_file_location('_eval_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def model_generate_fn(checkpoint: str, config, task_set: TaskSet) -> GenerateFn:
    """A `GenerateFn` for the model in `checkpoint`, via `codellm_jax.generate.load_model`.

    `checkpoint`: our pretrained format, a Hugging Face dir, or a training workdir (its model
    comes from the config saved with it, or from `config.model` if `config.model_from_config`).
    Generation settings: `config.generate` (empty stop_sequences = the task's own).
    """
    from codellm_jax import generate

    model_config = config if config.get('model_from_config', False) else None
    generator = generate.load_model(checkpoint, model_config)
    gen_cfg = generate.gen_config_from(config.generate)
    if not gen_cfg.stop_sequences:
        stops = prompting.stop_sequences(task_set.kind, task_set.language)
        gen_cfg = dataclasses.replace(gen_cfg, stop_sequences=stops)
    return make_generate_fn(generator, gen_cfg)


def _define_flags():
    from absl import flags

    flags.DEFINE_enum('task', None, ['py2java', 'humaneval-python', 'humaneval-java'], 'Task.')
    flags.DEFINE_string('candidates', None, 'JSONL of {"task_id", "completion"} to judge.')
    flags.DEFINE_string('checkpoint', None, 'Model checkpoint to generate with.')
    flags.DEFINE_string('config', None, 'Eval config `configs/eval_py2java.py[:arg]`.')
    flags.DEFINE_string('out_dir', None, 'Where results.jsonl and metrics.json go.')
    flags.DEFINE_string(
        'data_dir', None, 'Data root (default ../shared/data or $CODELLM_DATA_DIR).'
    )
    flags.DEFINE_integer('shots', None, 'Few-shot examples (translation).')
    flags.DEFINE_integer('num_samples', None, 'Samples per task (model).')
    flags.DEFINE_list('ks', None, 'pass@k values, e.g. 1,10.')
    flags.DEFINE_integer('workers', None, 'Parallel sandboxes.')
    flags.DEFINE_list('task_ids', None, 'Only these task ids.')


def _main(argv):
    del argv
    from absl import flags as absl_flags

    flags = absl_flags.FLAGS
    config = load_config(flags.config) if flags.config else None
    from codellm_jax import config as config_lib

    cfg = config_lib.to_dataclass(EvalConfig, config.eval) if config else EvalConfig()
    overrides = {
        'task': flags.task,
        'shots': flags.shots,
        'num_samples': flags.num_samples,
        'ks': tuple(int(k) for k in flags.ks) if flags.ks else None,
        'workers': flags.workers,
        'task_ids': tuple(flags.task_ids) if flags.task_ids else None,
    }
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if bool(flags.candidates) == bool(flags.checkpoint):
        raise SystemExit('Give exactly one of --candidates=FILE.jsonl or --checkpoint=DIR.')
    if flags.candidates:
        task_set = load_task_set(cfg.task, flags.data_dir)
        result = evaluate(
            cfg,
            candidates=read_candidates(flags.candidates, task_set),
            data_dir=flags.data_dir,
            out_dir=flags.out_dir,
        )
    else:
        if config is None:
            raise SystemExit('--checkpoint needs --config (model and generation settings).')
        task_set = load_task_set(cfg.task, flags.data_dir)
        check_toolchain(task_set.language)
        result = evaluate(
            cfg,
            generate_fn=model_generate_fn(flags.checkpoint, config, task_set),
            data_dir=flags.data_dir,
            out_dir=flags.out_dir,
        )
    print(json.dumps(result))


def main() -> None:
    """`python -m codellm_jax.evaluation.harness ...` (flags: see `_define_flags`)."""
    from absl import app

    _define_flags()
    app.run(_main)


if __name__ == '__main__':
    main()
