"""From extracted code to a complete test program (`Main.java` / a Python script).

- Java completion: `declaration + completion + "\\n" + test` (the declaration holds imports,
  `class Solution {` and the signature, left open).
- Java whole class: the declaration's imports and the candidate's imports first (deduplicated,
  `package` lines dropped), then the candidate with `class Solution` not `public` (the file is
  `Main.java`), then the test.
- Python completion: `prompt + completion + "\\n" + test`; whole function: the prompt's
  imports, the candidate, the test.
"""

from __future__ import annotations

import re

from codellm_jax.evaluation.tasks import Task
from codellm_jax.prompting import Extracted

_JAVA_IMPORT_RE = re.compile(r'^\s*import\s+(static\s+)?[\w.]+(\.\*)?\s*;\s*$', re.MULTILINE)
_JAVA_PACKAGE_RE = re.compile(r'^\s*package\s+[\w.]+\s*;\s*$', re.MULTILINE)
_PY_IMPORT_RE = re.compile(r'^(import\s+\S.*|from\s+\S+\s+import\s+.*)$', re.MULTILINE)


def java_program(task: Task, extracted: Extracted) -> str:
    """A complete `Main.java` for `extracted` code of `task`."""
    if extracted.kind == 'completion':
        return task.declaration + extracted.code + '\n' + task.test
    if extracted.kind != 'program':
        raise ValueError(f'No program to build from a {extracted.kind!r} candidate.')
    imports = [m.group(0).strip() for m in _JAVA_IMPORT_RE.finditer(task.declaration)]
    code = _JAVA_PACKAGE_RE.sub('', extracted.code)
    imports += [m.group(0).strip() for m in _JAVA_IMPORT_RE.finditer(code)]
    code = _JAVA_IMPORT_RE.sub('', code)
    code = re.sub(r'\bpublic\s+(final\s+)?class\s+Solution\b', 'class Solution', code)
    header = '\n'.join(dict.fromkeys(imports))
    return header + '\n\n' + code.strip() + '\n\n' + task.test


def python_program(task: Task, extracted: Extracted) -> str:
    """A complete Python script (solution + `check(entry_point)`) for `extracted` code."""
    if extracted.kind == 'completion':
        return task.declaration + extracted.code + '\n\n' + task.test + '\n'
    if extracted.kind != 'program':
        raise ValueError(f'No program to build from a {extracted.kind!r} candidate.')
    imports = '\n'.join(m.group(0) for m in _PY_IMPORT_RE.finditer(task.prompt))
    return imports + '\n\n' + extracted.code + '\n\n' + task.test + '\n'


def build_program(task: Task, extracted: Extracted) -> str:
    """`java_program` or `python_program` by the task's language."""
    if task.language == 'java':
        return java_program(task, extracted)
    if task.language == 'python':
        return python_program(task, extracted)
    raise ValueError(f'No judge for language {task.language!r} (task {task.task_id}).')
