"""Prompt templates (zero-/few-shot Python→Java translation, HumanEval generation) and
answer → code extraction.

Prompts are completion-style, for base models: the prompt ends inside the Java method (or
after the Python signature and docstring) and the model writes the body. Extraction also
accepts chat-style answers: the first fenced code block is taken, and a whole
`class Solution` (Java) or a whole `def entry_point` (Python) is recognised as a full program.

Example (1-shot py2java; the model continues after the last signature):

    Translate each Python function to Java. ...
    ### Python
    def add(a, b):
        return a + b
    ### Java
    class Solution {
        public int add(int a, int b) {
            return a + b;
        }
    }

    ### Python
    <task's Python>
    ### Java
    <task's java_declaration>
"""

from __future__ import annotations

import ast
import dataclasses
import re
import textwrap
from collections.abc import Sequence

from codellm_jax.evaluation.tasks import Task

TRANSLATION_HEADER = (
    'Translate each Python function to Java. The Java method goes in class Solution, keeps '
    'the given signature, and may use java.util.\n\n'
)
SECTION_STOP = '\n### '
# Codex-style stops for HumanEval Python completions (a new top-level statement ends the body).
PYTHON_STOPS = ('\ndef ', '\nclass ', '\nif __name__', '\nprint(', '\n#', '\nassert ')
_FENCE_RE = re.compile(r'```[ \t]*([A-Za-z0-9_+#-]*)[^\n]*\n(.*?)(?:```|\Z)', re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Extracted:
    """Code pulled out of a model answer.

    Attributes:
      kind: 'completion' (continues `Task.declaration`), 'program' (a whole class Solution /
        whole function), 'empty' (nothing there) or 'not_code' (text with no code in it).
      code: the code (empty for 'empty').
    """

    kind: str
    code: str


def translation_prompt(
    task: Task, fewshot: Sequence[Task] = (), *, with_docstring: bool = True
) -> str:
    """Zero-shot (`fewshot=()`) or k-shot Python→Java prompt; ends inside the Java method.

    Few-shot examples must come from the task set's few-shot pool, never from the eval set.
    """
    if not task.source_code:
        raise ValueError(f'Task {task.task_id} has no Python source to translate.')
    if any(ex.task_id == task.task_id for ex in fewshot):
        raise ValueError(f'Few-shot examples include the task itself ({task.task_id}).')
    parts = [TRANSLATION_HEADER]
    for ex in fewshot:
        parts.append(_translation_block(ex, with_docstring) + ex.reference_completion + '\n\n')
    parts.append(_translation_block(task, with_docstring))
    return ''.join(parts)


def _translation_block(task: Task, with_docstring: bool) -> str:
    python = task.source_code if with_docstring else task.source_code_nodoc
    return f'### Python\n{python.strip()}\n### Java\n{task.declaration}'


def generation_prompt(task: Task) -> str:
    """HumanEval-X generation: the task prompt itself (signature + docstring/Javadoc)."""
    return task.prompt


def stop_sequences(kind: str, language: str) -> tuple[str, ...]:
    """Stop strings for the generation module, for task kind and target language."""
    if kind == 'translation':
        return (SECTION_STOP,)
    return PYTHON_STOPS if language == 'python' else ('\npublic class Main',)


def extract_code(answer: str, task: Task, kind: str = 'generation') -> Extracted:
    """Turns a raw model answer into code to judge (see `Extracted`)."""
    if not answer or not answer.strip():
        return Extracted('empty', '')
    fenced = _first_fenced_block(answer, task.language)
    text = fenced if fenced is not None else _cut_at_stops(answer, task.language, kind)
    if not text.strip():
        return Extracted('empty', '')
    if not _looks_like_code(text, task.language):
        return Extracted('not_code', text)
    if task.language == 'java':
        return _extract_java(text, task)
    return _extract_python(text, task)


def _first_fenced_block(answer: str, language: str) -> str | None:
    blocks = _FENCE_RE.findall(answer)
    if not blocks:
        return None
    for lang, body in blocks:
        if lang.lower() in (language, 'py' if language == 'python' else language):
            return body
    return blocks[0][1]


def _cut_at_stops(answer: str, language: str, kind: str) -> str:
    stops = stop_sequences(kind, language)
    cut = len(answer)
    for stop in stops:
        i = answer.find(stop)
        if i >= 0:
            cut = min(cut, i)
    return answer[:cut]


def _looks_like_code(text: str, language: str) -> bool:
    """False for plain prose ('Sorry, I cannot ...'); broken code still counts as code."""
    if language == 'java':
        return bool(re.search(r'[;{}]', text))
    try:
        ast.parse(textwrap.dedent(text))  # parses only: nothing of the answer runs here
        return True
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        pass
    keywords = r'return|def|if|for|while|import|from|raise|pass|yield|with|try|class'
    return bool(re.search(rf'(^|\n)\s*(({keywords})\b|\w+\s*=)|[()\[\]]', text))


def _extract_java(text: str, task: Task) -> Extracted:
    match = re.search(r'\b(public\s+)?(final\s+)?class\s+Solution\b', text)
    if match:
        end = _balanced_end(text, match.start(), depth=0)
        head = text[: match.start()].replace('public class Solution', 'class Solution')
        body = text[match.start() : end].replace(match.group(0), 'class Solution', 1)
        return Extracted('program', (head + body).strip() + '\n')
    depth = _open_depth(task.declaration)
    end = _balanced_end(text, 0, depth=depth)
    code = text[:end]
    remaining = _open_depth(task.declaration + code)
    if 0 < remaining <= depth:
        code = code.rstrip() + '\n' + '}\n' * remaining  # the model stopped before the braces
    return Extracted('completion', code)


def _extract_python(text: str, task: Task) -> Extracted:
    if task.entry_point and re.search(rf'(^|\n)def\s+{re.escape(task.entry_point)}\s*\(', text):
        return Extracted('program', text)
    return Extracted('completion', text)


def _scan_java(text: str):
    """Yields (index, char) for braces outside strings, chars and comments."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith('//', i):
            j = text.find('\n', i)
            i = n if j < 0 else j
            continue
        if text.startswith('/*', i):
            j = text.find('*/', i + 2)
            i = n if j < 0 else j + 2
            continue
        if text.startswith('"""', i):
            j = text.find('"""', i + 3)
            i = n if j < 0 else j + 3
            continue
        if c in '"\'':
            j = i + 1
            while j < n and text[j] != c and text[j] != '\n':
                j += 2 if text[j] == '\\' else 1
            i = j + 1
            continue
        if c in '{}':
            yield i, c
        i += 1


def _open_depth(text: str) -> int:
    depth = 0
    for _, c in _scan_java(text):
        depth += 1 if c == '{' else -1
    return depth


def _balanced_end(text: str, start: int, depth: int) -> int:
    """Index just after the brace that brings `depth` to 0 (scanning from `start`), else len."""
    opened = depth > 0
    for i, c in _scan_java(text[start:]):
        depth += 1 if c == '{' else -1
        opened = opened or c == '{'
        if opened and depth <= 0:
            return start + i + 1
    return len(text)
