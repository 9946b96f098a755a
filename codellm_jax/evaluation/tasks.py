"""Benchmark loaders: HumanEval-X Python→Java translation and HumanEval-X generation.

Every task set turns its JSONL rows into `Task`s with the same fields, validating each row
(a missing or non-string field is an error naming the file, line and field). Data is read
from `<project root>/../shared/data` unless `data_dir` or env CODELLM_DATA_DIR says otherwise.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from codellm_jax.data import jsonl

TASK_SETS = ('py2java', 'humaneval-python', 'humaneval-java')

_PY2JAVA_FIELDS = (
    'task_id',
    'python_code',
    'python_code_nodoc',
    'python_entry_point',
    'java_declaration',
    'java_prompt',
    'java_body',
    'java_reference',
    'java_entry_point',
    'java_test',
)
_HUMANEVAL_FIELDS = ('task_id', 'prompt', 'canonical_solution', 'test', 'declaration')


@dataclasses.dataclass(frozen=True)
class Task:
    """One problem, in the form the prompts and the judges need.

    Attributes:
      task_id: e.g. 'HumanEval/10' (py2java) or 'Python/3' / 'Java/3'.
      language: language of the program to write ('python' | 'java').
      prompt: what the model continues for generation (HumanEval prompt / Java prompt).
      declaration: code the completion is appended to when judging (Java: imports, class,
        signature, left open; Python: the prompt).
      test: test code appended after the solution.
      reference_completion: the reference completion of `declaration` (passes `test`).
      reference_code: the whole reference program (for BLEU / CodeBLEU / exact match).
      source_code: the program to translate (py2java: Python source), else ''.
      source_code_nodoc: `source_code` without docstrings, else ''.
      entry_point: the function / method under test.
    """

    task_id: str
    language: str
    prompt: str
    declaration: str
    test: str
    reference_completion: str
    reference_code: str
    source_code: str = ''
    source_code_nodoc: str = ''
    entry_point: str = ''


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """`tasks` to evaluate and `fewshot` examples for prompts (disjoint from `tasks`)."""

    name: str
    language: str
    kind: str  # 'translation' | 'generation'
    tasks: tuple[Task, ...]
    fewshot: tuple[Task, ...] = ()

    def by_id(self, task_id: str) -> Task:
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        known = ', '.join(t.task_id for t in self.tasks[:3])
        raise KeyError(
            f'Unknown task id {task_id!r} for task set {self.name!r} '
            f'({len(self.tasks)} tasks, e.g. {known}, ...).'
        )


def default_data_dir() -> Path:
    """env CODELLM_DATA_DIR, else `<project root>/../shared/data`."""
    env = os.environ.get('CODELLM_DATA_DIR')
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / 'shared' / 'data'


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a JSONL file; each must have every `required` field as a string."""
    if not path.is_file():
        raise FileNotFoundError(
            f'Data file {path} not found; pass --data_dir or set CODELLM_DATA_DIR to the '
            'folder holding py2java/ and humaneval-x/ (see shared/data/README.md).'
        )
    rows = list(jsonl.read_jsonl(str(path), required, strings=True))
    if not rows:
        raise ValueError(f'{path}: no rows.')
    return rows


def _py2java_task(row: dict) -> Task:
    return Task(
        task_id=row['task_id'],
        language='java',
        prompt=row['java_prompt'],
        declaration=row['java_declaration'],
        test=row['java_test'],
        reference_completion=row['java_body'],
        reference_code=row['java_reference'],
        source_code=row['python_code'],
        source_code_nodoc=row['python_code_nodoc'],
        entry_point=row['java_entry_point'],
    )


def _humaneval_task(row: dict, language: str) -> Task:
    if language == 'python':
        reference = row['prompt'] + row['canonical_solution']
        declaration = row['prompt']
    else:
        reference = row['declaration'] + row['canonical_solution']
        declaration = row['declaration']
    return Task(
        task_id=row['task_id'],
        language=language,
        prompt=row['prompt'],
        declaration=declaration,
        test=row['test'],
        reference_completion=row['canonical_solution'],
        reference_code=reference,
        entry_point=row.get('entry_point') or _last_def(row['prompt'], language),
    )


def _last_def(prompt: str, language: str) -> str:
    """The function under test: the last top-level `def` of a Python prompt (helpers first)."""
    if language != 'python':
        return ''
    names = re.findall(r'^def\s+(\w+)\s*\(', prompt, re.MULTILINE)
    return names[-1] if names else ''


def load_task_set(name: str, data_dir: str | Path | None = None) -> TaskSet:
    """Loads 'py2java' | 'humaneval-python' | 'humaneval-java' from `data_dir`."""
    root = Path(data_dir) if data_dir else default_data_dir()
    if name == 'py2java':
        evals = read_jsonl(root / 'py2java' / 'humanevalx_py2java_eval.jsonl', _PY2JAVA_FIELDS)
        shots = read_jsonl(root / 'py2java' / 'humanevalx_py2java_fewshot.jsonl', _PY2JAVA_FIELDS)
        tasks = tuple(_py2java_task(r) for r in evals)
        fewshot = tuple(_py2java_task(r) for r in shots)
        overlap = {t.task_id for t in tasks} & {t.task_id for t in fewshot}
        if overlap:
            raise ValueError(f'Few-shot pool and eval set share tasks {sorted(overlap)}.')
        return TaskSet(name, 'java', 'translation', tasks, fewshot)
    if name in ('humaneval-python', 'humaneval-java'):
        language = name.split('-')[1]
        path = root / 'humaneval-x' / f'humaneval_{language}.jsonl'
        tasks = tuple(_humaneval_task(r, language) for r in read_jsonl(path, _HUMANEVAL_FIELDS))
        return TaskSet(name, language, 'generation', tasks)
    raise ValueError(f'Unknown task set {name!r}; expected one of {list(TASK_SETS)}.')
