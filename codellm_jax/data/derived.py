"""Offline SFT and preference data derived from the code corpus itself (via `ast`).

Instruction: a function's signature and docstring; response: the function without its
docstring. Preferences: the same prompt, chosen = the true function, rejected = the body of a
different function under the same signature (a deterministic, clearly worse answer).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Iterator

from codellm_jax.data.corpus import SourceFile


def _signature_line(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    body_start = node.body[0].lineno
    return textwrap.dedent(''.join(lines[node.lineno - 1 : body_start - 1])).rstrip()


def _functions(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Function definitions among statements, recursively (never walks into expressions)."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node
        for field in ('body', 'orelse', 'finalbody', 'handlers'):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _functions([c for c in children if isinstance(c, ast.AST)])


def function_pairs(source: str, min_doc_chars: int = 20) -> Iterator[dict[str, str]]:
    """(prompt, response) for each documented function of a Python module.

    Skips modules that do not parse, functions without a docstring of at least
    `min_doc_chars` characters, and functions with nothing but a docstring.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return
    lines = source.splitlines(keepends=True)
    for node in _functions(tree.body):
        doc = ast.get_docstring(node)
        if not doc or len(doc) < min_doc_chars or len(node.body) < 2 or node.decorator_list:
            continue
        doc_node = node.body[0]
        signature = _signature_line(lines, node)
        if not signature:
            continue
        body = ''.join(lines[doc_node.end_lineno : node.end_lineno])
        code = signature + '\n' + textwrap.indent(textwrap.dedent(body).rstrip(), '    ') + '\n'
        prompt = (
            f'Write a Python function with this signature:\n{signature}\n\n'
            f'It should do the following:\n{doc.strip()}\n'
        )
        yield {'prompt': prompt, 'response': code, 'signature': signature, 'name': node.name}


def instructions_from_corpus(
    files: Iterable[SourceFile], max_examples: int | None = None
) -> Iterator[tuple[SourceFile, dict[str, str]]]:
    """(file, pair) for documented functions of the Python files, in corpus order."""
    n = 0
    for f in files:
        if f.language != 'python':
            continue
        for pair in function_pairs(f.text):
            yield f, pair
            n += 1
            if max_examples and n >= max_examples:
                return


def preferences_from_pairs(pairs: list[dict[str, str]]) -> Iterator[dict[str, str]]:
    """Preference triples: chosen = pair i's function; rejected = pair i's signature over the
    body of pair (i + len // 2) (a real but unrelated function body)."""
    n = len(pairs)
    for i, p in enumerate(pairs):
        other = pairs[(i + max(n // 2, 1)) % n]
        if n < 2 or other['response'] == p['response']:
            continue
        other_body = other['response'][len(other['signature']) :]
        yield {
            'prompt': p['prompt'],
            'chosen': p['response'],
            'rejected': p['signature'] + other_body,
        }
