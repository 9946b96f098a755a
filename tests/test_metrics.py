"""Metrics against brute-force and hand-computed references."""

import itertools
import math

import pytest

from codellm_jax.evaluation import metrics


def brute_force_pass_at_k(n, c, k):
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize('n', [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert metrics.pass_at_k(n, c, k) == pytest.approx(
                brute_force_pass_at_k(n, c, k), abs=1e-12
            )


def test_pass_at_k_closed_forms_and_large_n():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(200, 0, 100) == 0.0
    assert metrics.pass_at_k(200, 101, 100) == 1.0
    expected = 1 - math.comb(200 - 7, 50) / math.comb(200, 50)
    assert metrics.pass_at_k(200, 7, 50) == pytest.approx(expected, rel=1e-9)


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError, match='c <= n'):
        metrics.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match='pass@5'):
        metrics.pass_at_k(3, 1, 5)


def test_mean_pass_at_k_skips_k_larger_than_samples():
    got = metrics.mean_pass_at_k([1, 0, 2], [2, 2, 2], ks=(1, 2, 10))
    assert got == pytest.approx({'pass@1': (0.5 + 0 + 1) / 3, 'pass@2': (1 + 0 + 1) / 3})


def test_bleu_identical_and_hand_computed():
    assert metrics.bleu(['int x = a + b ;'], ['int x = a + b ;']) == pytest.approx(100.0)
    # hyp 'a b c d' vs ref 'a b c e': p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 → with sacrebleu's
    # default 'exp' smoothing p4 = 1 / (2 * 1); BP = 1.
    expected = 100 * math.exp(
        (math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2) + math.log(1 / 2)) / 4
    )
    assert metrics.bleu(['a b c d'], ['a b c e']) == pytest.approx(expected, rel=1e-6)
    assert metrics.bleu(['x'], ['y']) == pytest.approx(0.0)


def test_codebleu_identical_is_one_and_different_is_less():
    a = 'class Solution {\n  int f(int x) {\n    int y = x + 1;\n    return y * 2;\n  }\n}\n'
    b = 'class Solution {\n  String g(String s) {\n    return s.trim();\n  }\n}\n'
    same = metrics.codebleu([a], [a], lang='java')
    assert same['codebleu'] == pytest.approx(1.0)
    different = metrics.codebleu([b], [a], lang='java')
    assert different['codebleu'] < 0.6
    renamed = metrics.codebleu([a.replace('y', 'z')], [a], lang='java')
    assert different['codebleu'] < renamed['codebleu'] < 1.0
    py = 'def f(x):\n    return x + 1\n'
    assert metrics.codebleu([py], [py], lang='python')['codebleu'] == pytest.approx(1.0)


def test_exact_match_ignores_whitespace_only():
    hyps = ['int  f() {\n return 1; }', 'int f() { return 2; }']
    refs = ['int f() { return 1; }', 'int f() { return 1; }']
    assert metrics.exact_match(hyps, refs) == 0.5
    with pytest.raises(ValueError, match='2 hypotheses but 1 references'):
        metrics.exact_match(hyps, refs[:1])
