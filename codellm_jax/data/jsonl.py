"""JSONL readers with line-numbered errors, record validation, and the HumanEval-X py2java
loader (read in place from `../shared/data/py2java`, never copied)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

PY2JAVA_DIR = os.path.join('..', 'shared', 'data', 'py2java')
PY2JAVA_FILES = {
    'fewshot': 'humanevalx_py2java_fewshot.jsonl',
    'eval': 'humanevalx_py2java_eval.jsonl',
}


def read_jsonl_lines(
    path: str, required: Sequence[str] = (), *, strings: bool = False
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields `(line number, record)` for each non-blank line of `path`.

    Raises FileNotFoundError for a missing file, and ValueError naming `path:line` for a line
    that is not a JSON object, lacks a `required` field, or (with `strings`) has a required
    field that is not a string.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'JSONL file {path!r} does not exist.')
    with open(path, encoding='utf-8') as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{lineno}: malformed JSON line ({e.msg}).') from e
            if not isinstance(record, dict):
                raise ValueError(f'{path}:{lineno}: expected a JSON object, got {type(record)}.')
            for field in required:
                if field not in record:
                    raise ValueError(
                        f'{path}:{lineno}: missing field {field!r} (has {sorted(record)}).'
                    )
                if strings and not isinstance(record[field], str):
                    raise ValueError(f'{path}:{lineno}: field {field!r} is not a string.')
            yield lineno, record


def read_jsonl(
    path: str, required: Sequence[str] = (), *, strings: bool = False
) -> Iterator[dict[str, Any]]:
    """Yields one dict per non-blank line of `path` (errors as in `read_jsonl_lines`)."""
    for _, record in read_jsonl_lines(path, required, strings=strings):
        yield record


def instruction_record(record: dict[str, Any], where: str = '') -> dict[str, str]:
    """Normalises an SFT record: {'prompt', 'response'} or {'messages': [{role, content}]}.

    Returns {'prompt', 'response', 'messages'} with `messages` a JSON string ('' for pairs).
    """
    if 'messages' in record:
        msgs = record['messages']
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and 'role' in m and 'content' in m for m in msgs
        ):
            raise ValueError(f'{where}: "messages" must be a list of {{role, content}} objects.')
        return {'prompt': '', 'response': '', 'messages': json.dumps(msgs)}
    if 'prompt' in record and 'response' in record:
        return {'prompt': record['prompt'], 'response': record['response'], 'messages': ''}
    raise ValueError(
        f'{where}: expected "prompt" + "response", or "messages"; got {sorted(record)}.'
    )


def read_instructions(path: str) -> Iterator[dict[str, str]]:
    """SFT records of a JSONL file, normalised by `instruction_record`."""
    for i, record in enumerate(read_jsonl(path), start=1):
        yield instruction_record(record, f'{path}: record {i}')


def read_translations(path: str) -> Iterator[dict[str, str]]:
    """Translation pairs (source_lang, source, target_lang, target) of a JSONL file."""
    for r in read_jsonl(path, ('source_lang', 'source', 'target_lang', 'target')):
        yield {k: str(r[k]) for k in ('source_lang', 'source', 'target_lang', 'target')}


def read_preferences(path: str) -> Iterator[dict[str, str]]:
    """Preference triples (prompt, chosen, rejected) of a JSONL file."""
    for r in read_jsonl(path, ('prompt', 'chosen', 'rejected')):
        yield {k: str(r[k]) for k in ('prompt', 'chosen', 'rejected')}


def py2java_path(split: str, root: str = '.') -> str:
    """Path of the HumanEval-X py2java `split` ('fewshot' or 'eval') from the project root."""
    if split not in PY2JAVA_FILES:
        raise ValueError(f'py2java split {split!r}; expected one of {sorted(PY2JAVA_FILES)}.')
    return os.path.join(root, PY2JAVA_DIR, PY2JAVA_FILES[split])


def load_py2java(split: str, root: str = '.') -> list[dict[str, str]]:
    """HumanEval-X Python→Java pairs as translation records (plus `task_id`).

    `source` is the Python code (with docstring), `target` the whole reference Java class.
    """
    out = []
    for r in read_jsonl(py2java_path(split, root), ('python_code', 'java_reference')):
        out.append(
            {
                'source_lang': 'python',
                'source': r['python_code'],
                'target_lang': 'java',
                'target': r['java_reference'],
                'task_id': str(r.get('task_id', r.get('source', ''))),
            }
        )
    return out
