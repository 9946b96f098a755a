"""Losses against a brute-force numpy reference."""

import jax.numpy as jnp
import numpy as np
import pytest

from codellm_jax import losses


def _reference(logits, targets, weights, smoothing=0.0, z=0.0):
    """Per-token loop in float64."""
    v = logits.shape[-1]
    loss = nll = zs = correct = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            x = logits[b, t].astype(np.float64)
            log_z = np.log(np.sum(np.exp(x - x.max()))) + x.max()
            logp = x - log_z
            w = float(weights[b, t])
            y = int(targets[b, t])
            q = np.full(v, smoothing / v)
            q[y] += 1.0 - smoothing
            ce = -np.sum(q * logp) + np.sum(q[q > 0] * np.log(q[q > 0]))  # KL(q || p)
            loss += w * (ce + z * log_z**2)
            nll += -w * logp[y]
            zs += w * z * log_z**2
            correct += w * float(np.argmax(x) == y)
    return loss, nll, zs, correct, float(np.sum(weights))


@pytest.mark.parametrize('smoothing,z', [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-3), (0.2, 1e-2)])
def test_cross_entropy_sums_match_reference(smoothing, z):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
    weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
    cfg = losses.LossConfig(label_smoothing=smoothing, z_loss=z)
    got = losses.cross_entropy_sums(jnp.asarray(logits), targets, weights, cfg)
    ref = _reference(logits, targets, weights, smoothing, z)
    names = ('loss_sum', 'nll_sum', 'z_loss_sum', 'correct_sum', 'weight_sum')
    for name, r in zip(names, ref, strict=True):
        np.testing.assert_allclose(float(got[name]), r, rtol=1e-5, atol=1e-5, err_msg=name)


def test_summarize_is_token_weighted_and_safe_on_empty():
    # Two batches with different token counts: the mean is over tokens, not batches.
    a = {'loss_sum': 6.0, 'nll_sum': 6.0, 'z_loss_sum': 0.0, 'correct_sum': 1.0, 'weight_sum': 2.0}
    b = {'loss_sum': 2.0, 'nll_sum': 2.0, 'z_loss_sum': 0.0, 'correct_sum': 3.0, 'weight_sum': 6.0}
    total = {k: jnp.asarray(a[k] + b[k]) for k in a}
    s = losses.summarize(total)
    assert float(s['loss']) == pytest.approx(1.0)
    assert float(s['perplexity']) == pytest.approx(np.e, rel=1e-6)
    assert float(s['accuracy']) == pytest.approx(0.5)
    empty = losses.summarize({k: jnp.zeros(()) for k in a})
    assert all(np.isfinite(float(v)) for v in empty.values())


def test_bad_loss_config_is_named():
    with pytest.raises(ValueError, match='label_smoothing'):
        losses.LossConfig(label_smoothing=1.5)
