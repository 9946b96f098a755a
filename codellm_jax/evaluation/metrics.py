"""Metrics: pass@k (unbiased estimator), corpus BLEU (sacrebleu), CodeBLEU, exact match."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k) (Chen et al., 2021).

    Args:
      n: samples drawn; c: how many passed; k: budget (k <= n).
    Computed as a product, stable for large n.
    """
    if not 0 <= c <= n:
        raise ValueError(f'pass_at_k needs 0 <= c <= n, got n={n}, c={c}.')
    if not 1 <= k <= n:
        raise ValueError(f'pass@{k} needs 1 <= k <= n samples per task, got n={n}.')
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(
    num_correct: Sequence[int], num_samples: Sequence[int], ks: Sequence[int]
) -> dict[str, float]:
    """`{'pass@k': mean over problems}` for each k that every problem has samples for."""
    out = {}
    for k in ks:
        if all(n >= k for n in num_samples):
            scores = [pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct, strict=True)]
            out[f'pass@{k}'] = float(np.mean(scores)) if scores else 0.0
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = '13a') -> float:
    """Corpus BLEU (0-100) with sacrebleu, one reference per hypothesis."""
    import sacrebleu

    _same_length(hypotheses, references)
    return float(
        sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score
    )


def codebleu(
    hypotheses: Sequence[str], references: Sequence[str], lang: str = 'java'
) -> dict[str, float]:
    """CodeBLEU (0-1) and its four parts, with the `codebleu` package (tree-sitter grammars)."""
    try:
        from codebleu import calc_codebleu
    except ImportError as e:
        raise RuntimeError(
            'CodeBLEU needs the `codebleu`, `tree-sitter` and `tree-sitter-java` packages at the '
            'versions pinned in setup.cfg; run `make install`.'
        ) from e
    _same_length(hypotheses, references)
    scores = calc_codebleu(list(references), list(hypotheses), lang=lang)
    return {k: float(v) for k, v in scores.items()}


def normalize_whitespace(code: str) -> str:
    """Code with runs of whitespace collapsed (for exact match)."""
    return ' '.join(code.split())


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Fraction (0-1) of hypotheses equal to their reference up to whitespace."""
    _same_length(hypotheses, references)
    if not hypotheses:
        return 0.0
    hits = sum(
        normalize_whitespace(h) == normalize_whitespace(r)
        for h, r in zip(hypotheses, references, strict=True)
    )
    return hits / len(hypotheses)


def _same_length(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f'{len(hypotheses)} hypotheses but {len(references)} references.')
