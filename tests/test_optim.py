"""Schedules, weight-decay masks and optimizers against hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from codellm_jax import optim


def test_warmup_then_cosine_matches_formula():
    cfg = optim.OptimizerConfig(
        learning_rate=1.0, warmup_steps=10, total_steps=110, decay='cosine', end_lr_fraction=0.1
    )
    lr = optim.make_schedule(cfg)
    assert float(lr(0)) == pytest.approx(0.0)
    assert float(lr(5)) == pytest.approx(0.5)
    assert float(lr(10)) == pytest.approx(1.0)
    for s in (10, 40, 60, 110):
        frac = (s - 10) / 100
        want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))
        assert float(lr(s)) == pytest.approx(want, rel=1e-5)


def test_linear_and_rsqrt_decay():
    lin = optim.make_schedule(
        optim.OptimizerConfig(
            learning_rate=2.0, warmup_steps=0, total_steps=100, decay='linear', end_lr_fraction=0
        )
    )
    assert float(lin(50)) == pytest.approx(1.0)
    rs = optim.make_schedule(
        optim.OptimizerConfig(learning_rate=1.0, warmup_steps=100, decay='rsqrt')
    )
    assert float(rs(100)) == pytest.approx(1.0)
    assert float(rs(300)) == pytest.approx(math.sqrt(100 / 300))


def _params():
    return {
        'embed': {'embedding': jnp.ones((8, 4))},
        'layers': {
            'attn_norm': {'scale': jnp.ones((2, 4))},
            'mlp': {'up': {'kernel': jnp.ones((2, 4, 6))}},
        },
        'encoder': {'rel_bias': {'embedding': jnp.ones((32, 2))}},
        'final_norm': {'scale': jnp.ones((4,))},
        'lm_head': {'kernel': jnp.ones((4, 8))},
    }


def test_weight_decay_mask_excludes_norms_and_embeddings():
    mask = optim.weight_decay_mask(_params())
    assert mask['layers']['mlp']['up']['kernel'] and mask['lm_head']['kernel']
    assert not mask['layers']['attn_norm']['scale'] and not mask['final_norm']['scale']
    assert not mask['embed']['embedding'] and not mask['encoder']['rel_bias']['embedding']
    mask = optim.weight_decay_mask(_params(), decay_embeddings=True)
    assert mask['embed']['embedding'] and not mask['encoder']['rel_bias']['embedding']


def test_adamw_decays_only_masked_leaves():
    # Zero gradients: Adam's update is 0, so only decoupled weight decay moves params.
    cfg = optim.OptimizerConfig(
        learning_rate=0.1, warmup_steps=0, decay='constant', weight_decay=0.5, grad_clip_norm=1.0
    )
    tx = optim.make_optimizer(cfg)
    params = _params()
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new['lm_head']['kernel'], 1 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_allclose(new['layers']['attn_norm']['scale'], 1.0)
    np.testing.assert_allclose(new['embed']['embedding'], 1.0)


def test_global_norm_clipping_applies_before_adam_first_step():
    # With b1=b2=0 and eps≈0, Adam's step is sign(g); clipping must not change the sign, so
    # check instead that clipped grads enter the moments: mu = (1-b1) * clipped_g.
    cfg = optim.OptimizerConfig(
        learning_rate=1.0, warmup_steps=0, decay='constant', weight_decay=0.0, grad_clip_norm=1.0
    )
    tx = optim.make_optimizer(cfg)
    params = {'w': jnp.zeros((2, 2))}
    g = {'w': jnp.full((2, 2), 3.0)}  # global norm 6 -> clipped to 0.5 each
    _, state = tx.update(g, tx.init(params), params)
    mu = state[1][0].mu['w']
    np.testing.assert_allclose(mu, (1 - cfg.b1) * 0.5, rtol=1e-6)


def test_adafactor_runs_and_factors_matrices():
    cfg = optim.OptimizerConfig(name='adafactor', learning_rate=1e-2, decay='rsqrt', weight_decay=0)
    tx = optim.make_optimizer(cfg)
    params = {'w': jnp.ones((2, 256, 192)), 'scale': jnp.ones((192,))}
    state = tx.init(params)
    g = jax.tree.map(lambda p: jnp.full(p.shape, 0.1), params)
    updates, _ = tx.update(g, state, params)
    assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))
    # Factored (dims >= 128): no full-size second-moment leaf for the 3-D kernel.
    sizes = [x.size for x in jax.tree.leaves(state) if hasattr(x, 'size')]
    assert 2 * 256 * 192 not in sizes


def test_bad_optimizer_config_is_named():
    with pytest.raises(ValueError, match='optimizer.name'):
        optim.OptimizerConfig(name='sgd')
    with pytest.raises(ValueError, match='optimizer.decay'):
        optim.OptimizerConfig(decay='exp')
