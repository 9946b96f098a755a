"""The pure train step: accumulation equals one big batch, one compile, non-finite refusal."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_models

from codellm_jax import losses, sharding, steps, synthetic_data
from codellm_jax import train_state as ts
from codellm_jax.models import decoder, encoder_decoder

DEC = tiny_models.decoder_config(max_seq_len=32)
ENCDEC = tiny_models.encoder_decoder_config()


def _batch(kind, seed=0, batch=8):
    rng = np.random.default_rng(seed)
    if kind == 'decoder':
        return synthetic_data.decoder_batch(rng, batch, 16, 64)
    return synthetic_data.encoder_decoder_batch(rng, batch, 12, 8, 64)


def _setup(kind, tx):
    module = decoder if kind == 'decoder' else encoder_decoder
    cfg = DEC if kind == 'decoder' else ENCDEC
    params = module.init_params(cfg, jax.random.key(0))
    return ts.create(params, tx), steps.make_logits_fn(kind, cfg)


def _step(tx, logits_fn, micro, loss_cfg=losses.LossConfig()):
    return jax.jit(
        functools.partial(
            steps.train_step,
            tx=tx,
            schedule=optax.constant_schedule(1.0),
            logits_fn=logits_fn,
            cfg=steps.StepConfig(num_microbatches=micro, loss=loss_cfg),
        )
    )


@pytest.mark.parametrize('kind', ['decoder', 'encoder_decoder'])
def test_accumulation_equals_one_big_batch(kind):
    # SGD makes the update linear in the gradient, so any accumulation error shows in params.
    tx = optax.sgd(1.0)
    state, logits_fn = _setup(kind, tx)
    batch = _batch(kind)
    # Rows with different token counts: a per-microbatch mean would differ from the token mean.
    assert len(set(batch[[k for k in batch if 'weights' in k][0]].sum(1))) > 1
    loss_cfg = losses.LossConfig(label_smoothing=0.1, z_loss=1e-3)
    one, m1 = _step(tx, logits_fn, 1, loss_cfg)(state, batch, jax.random.key(1))
    four, m4 = _step(tx, logits_fn, 4, loss_cfg)(state, batch, jax.random.key(1))
    for k in ('loss_sum', 'nll_sum', 'z_loss_sum', 'correct_sum', 'weight_sum', 'grad_norm'):
        np.testing.assert_allclose(m4[k], m1[k], rtol=1e-5, err_msg=k)
    assert float(m1['finite']) == 1.0
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), one.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the step did something
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), four.params, one.params
    )


def test_gradient_is_token_mean_of_nll():
    # Brute force: the step's gradient equals grad of (sum of per-token nll) / n.
    tx = optax.sgd(1.0)
    state, logits_fn = _setup('decoder', tx)
    batch = _batch('decoder')

    def mean_nll(p):
        logits = decoder.forward(
            p, DEC, batch['input_tokens'], batch['positions'], batch['segment_ids']
        )
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, batch['target_tokens'][..., None], -1)[..., 0]
        return jnp.sum(nll * batch['loss_weights']) / jnp.sum(batch['loss_weights'])

    want = jax.tree.map(lambda p, g: p - g, state.params, jax.grad(mean_nll)(state.params))
    new, _ = _step(tx, logits_fn, 1)(state, batch, jax.random.key(0))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), new.params, want
    )


def test_no_recompilation_after_first_step():
    mesh = sharding.make_mesh(((2, 4, 1), ('data', 'fsdp', 'tensor')))
    rules = sharding.model_rules(sharding.axes.DEFAULT_RULES, DEC, mesh)
    tx = optax.adamw(1e-3)
    traces = []

    def counting_logits(params, batch):
        traces.append(1)  # runs only while tracing
        return steps.decoder_logits(params, batch, model_cfg=DEC)

    params, param_sh = sharding.init_sharded(
        functools.partial(decoder.init_params_boxed, DEC), jax.random.key(0), mesh, rules
    )
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state = jax.jit(functools.partial(ts.create, tx=tx))(params)
    state_sh = ts.TrainState(
        step=replicated,
        params=param_sh,
        opt_state=jax.tree.map(lambda x: x.sharding, state.opt_state),
    )
    state = jax.device_put(state, state_sh)
    batch_sh = sharding.logical_sharding(mesh, rules, 'batch')
    fn = steps.jit_train_step(
        functools.partial(
            steps.train_step,
            tx=tx,
            schedule=optax.constant_schedule(1e-3),
            logits_fn=counting_logits,
            cfg=steps.StepConfig(),
        ),
        state_sh,
        batch_sh,
        mesh,
    )
    with sharding.logical_rules(mesh, rules):
        for i in range(4):
            batch = {k: jax.device_put(v, batch_sh) for k, v in _batch('decoder', seed=i).items()}
            state, metrics = fn(state, batch, jax.random.key(0))
            assert float(metrics['finite']) == 1.0
    assert len(traces) == 1
    assert fn._cache_size() == 1
    assert int(state.step) == 4
    assert state.params['embed']['embedding'].sharding == param_sh['embed']['embedding']


def test_nonfinite_update_is_refused_and_counted():
    tx = optax.adamw(1e-2)
    state, logits_fn = _setup('decoder', tx)
    fn = _step(tx, logits_fn, 2)
    batch = _batch('decoder')
    bad = dict(batch, loss_weights=batch['loss_weights'] * np.float32('nan'))
    before = jax.tree.map(np.asarray, state)
    new, metrics = fn(state, bad, jax.random.key(0))
    assert float(metrics['finite']) == 0.0
    assert int(new.step) == 1  # the batch is consumed
    jax.tree.map(np.testing.assert_array_equal, new.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, new.opt_state, before.opt_state)
    good, metrics = fn(new, batch, jax.random.key(0))
    assert float(metrics['finite']) == 1.0 and int(good.step) == 2


def test_overflowing_params_are_refused():
    tx = optax.sgd(float('inf'))
    state, logits_fn = _setup('decoder', tx)
    new, metrics = _step(tx, logits_fn, 1)(state, _batch('decoder'), jax.random.key(0))
    assert float(metrics['finite']) == 0.0
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new.params))


def test_microbatches_must_divide_batch():
    tx = optax.sgd(1.0)
    state, logits_fn = _setup('decoder', tx)
    with pytest.raises(ValueError, match='not divisible by num_microbatches=3'):
        _step(tx, logits_fn, 3)(state, _batch('decoder'), jax.random.key(0))
