"""Sharding on 8 fake CPU devices: sharded forward/gradients equal single-device ones,
params really are sharded per spec, golden specs, and clear mesh / divisibility errors.

Regenerate the golden file with `UPDATE_GOLDEN=1 pytest tests/test_sharding.py`.
"""

import dataclasses
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tiny_models

from codellm_jax import axes, sharding
from codellm_jax.models import decoder

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'llama_tiny_param_specs_2x2x2.json'

TINY = tiny_models.decoder_config(tiny_models.DECODER, max_seq_len=64, rope_theta=10000.0)
RULES = axes.DEFAULT_RULES


def _loss(params, tokens_BxT, segment_ids_BxT):
    logits = decoder.forward(params, TINY, tokens_BxT, None, segment_ids_BxT)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 3]), logits


@pytest.fixture(scope='module')
def reference():
    params = jax.jit(decoder.init_params, static_argnums=0)(TINY, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (8, 8), 1, TINY.vocab_size)
    segs = jnp.asarray([[1] * 5 + [2] * 3] * 8)
    (loss, logits), grads = jax.jit(jax.value_and_grad(_loss, has_aux=True))(params, tokens, segs)
    return params, tokens, segs, logits, grads


def _tree_close(a, b, tol=1e-5):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=tol, rtol=tol), a, b)


@pytest.mark.parametrize('shape', [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_forward_and_grads_match_single_device(reference, shape):
    params_ref, tokens, segs, logits_ref, grads_ref = reference
    mesh = sharding.make_mesh((shape, axes.MESH_AXES))
    rules = sharding.model_rules(RULES, TINY, mesh)
    init_fn = functools.partial(decoder.init_params_boxed, TINY)
    params, shardings = sharding.init_sharded(init_fn, jax.random.key(0), mesh, rules)
    # Same values as the unsharded init, and every leaf laid out as its spec says.
    _tree_close(params, params_ref, 0)
    specs = decoder.param_logical_axes(TINY)
    for leaf, spec in zip(
        jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=sharding._is_spec), strict=True
    ):
        mesh_spec = sharding.mesh_spec(spec, rules)
        assert leaf.sharding.spec == mesh_spec
        want = tuple(
            d // sharding.mesh_axis_size(mesh, e)
            for d, e in zip(leaf.shape, tuple(mesh_spec) + (None,) * leaf.ndim, strict=False)
        )
        assert leaf.addressable_shards[0].data.shape == want
    assert params['layers']['mlp']['up']['kernel'].addressable_shards[0].data.shape == (
        2,
        64 // shape[1],
        128 // shape[2],
    )

    batch = sharding.logical_sharding(mesh, rules, axes.BATCH, axes.LENGTH)
    step = jax.jit(
        jax.value_and_grad(_loss, has_aux=True),
        in_shardings=(shardings, batch, batch),
        out_shardings=((None, None), shardings),
    )
    with sharding.logical_rules(mesh, rules):
        (_, logits), grads = step(params, tokens, segs)
        hlo = step.lower(params, tokens, segs).as_text()
    assert 'sharding_constraint' in hlo  # activation constraints were really applied
    np.testing.assert_allclose(logits, logits_ref, atol=1e-5, rtol=1e-5)
    _tree_close(grads, grads_ref)


def _mesh_specs(mesh, rules):
    _, specs = sharding.abstract_params(
        functools.partial(decoder.init_params_boxed, TINY), jax.random.key(0)
    )
    shard = sharding.param_shardings(specs, mesh, rules)
    flat, _ = jax.tree_util.tree_flatten_with_path(shard)
    return {
        '/'.join(k.key for k in path): [list(e) if isinstance(e, tuple) else e for e in s.spec]
        for path, s in flat
    }


def test_param_specs_match_golden():
    mesh = sharding.make_mesh(((2, 2, 2), axes.MESH_AXES))
    got = _mesh_specs(mesh, sharding.model_rules(RULES, TINY, mesh))
    if os.environ.get('UPDATE_GOLDEN') == '1':
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + '\n')
    assert got == json.loads(GOLDEN.read_text())
    assert got['layers/attn/q/kernel'] == [None, 'fsdp', 'tensor', None]


def test_no_mesh_rules_context_runs_on_one_device(reference):
    params, tokens, segs, logits_ref, _ = reference
    with sharding.logical_rules(None, RULES):
        logits = jax.jit(lambda p, t, s: decoder.forward(p, TINY, t, None, s))(params, tokens, segs)
        x = sharding.constrain(jnp.ones((2, 3)), (axes.BATCH, axes.EMBED))
    np.testing.assert_allclose(logits, logits_ref, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(x, 1.0)


def test_make_mesh_fill_and_config():
    cfg = ml_collections.ConfigDict({'shape': (2, -1, 2), 'axes': axes.MESH_AXES})
    mesh = sharding.make_mesh(cfg)
    assert dict(mesh.shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    one = sharding.make_mesh(((1, -1, 1), axes.MESH_AXES), devices=jax.devices()[:1])
    assert one.devices.size == 1


@pytest.mark.parametrize(
    'shape, match',
    [
        ((2, 2, 3), '12 devices but 8'),
        ((3, -1, 1), 'do not divide the 8 devices'),
        ((-1, -1, 1), 'more than one -1'),
    ],
)
def test_mesh_mismatch_errors(shape, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh((shape, axes.MESH_AXES))


def test_divisibility_errors_and_kv_replication():
    mesh8 = sharding.make_mesh(((1, 1, 8), axes.MESH_AXES))
    with pytest.raises(ValueError, match='num_heads=4 .* 8-way'):
        sharding.model_rules(RULES, TINY, mesh8)
    wide = dataclasses.replace(TINY, num_heads=8, num_kv_heads=8, head_dim=8, d_ff=100)
    with pytest.raises(ValueError, match='d_ff=100'):
        sharding.model_rules(RULES, wide, mesh8)
    mesh2 = sharding.make_mesh(((1, 4, 2), axes.MESH_AXES))
    odd = dataclasses.replace(TINY, num_heads=6, num_kv_heads=3, head_dim=8)
    with pytest.raises(ValueError, match='num_kv_heads=3'):
        sharding.model_rules(RULES, odd, mesh2)
    # kv heads fewer than (and dividing) the tensor size are replicated.
    mesh4 = sharding.make_mesh(((1, 2, 4), axes.MESH_AXES))
    rules = dict(sharding.model_rules(RULES, TINY, mesh4))
    assert rules[axes.KV_HEADS] is None and rules[axes.HEADS] == 'tensor'
    # A parameter dimension that does not split evenly names the parameter.
    bad_vocab = dataclasses.replace(TINY, vocab_size=250)
    shapes, specs = sharding.abstract_params(
        functools.partial(decoder.init_params_boxed, bad_vocab), jax.random.key(0)
    )
    with pytest.raises(ValueError, match=r"\['embed'\]\['embedding'\].*4-way"):
        sharding.param_shardings(specs, mesh4, rules=RULES, shapes=shapes)
    with pytest.raises(ValueError, match='Unknown logical axis'):
        sharding.normalize_rules((('batchh', 'data'),))


def test_sharded_kv_cache_decode_matches_full_forward(reference):
    params_ref, tokens, _, _, _ = reference
    full = jax.jit(decoder.forward, static_argnums=1)(params_ref, TINY, tokens)
    mesh = sharding.make_mesh(((2, 2, 2), axes.MESH_AXES))
    rules = sharding.model_rules(RULES, TINY, mesh)
    init_fn = functools.partial(decoder.init_params_boxed, TINY)
    params, shardings = sharding.init_sharded(init_fn, jax.random.key(0), mesh, rules)
    cache_sh = sharding.param_shardings(decoder.cache_logical_axes(TINY), mesh, rules)
    cache = jax.device_put(decoder.init_cache(TINY, 8, 16), cache_sh)
    batch = sharding.logical_sharding(mesh, rules, axes.BATCH, axes.LENGTH)
    step = jax.jit(
        lambda p, t, q, c: decoder.forward_with_cache(p, TINY, t, q, c),
        in_shardings=(shardings, batch, batch, cache_sh),
        out_shardings=(None, cache_sh),
    )
    pos = jnp.broadcast_to(jnp.arange(8), (8, 8))
    chunks = [(0, 5), (5, 6), (6, 7), (7, 8)]  # prefill 5, then one token at a time
    inputs = [jax.device_put((tokens[:, a:b], pos[:, a:b]), batch) for a, b in chunks]
    outs = []
    with sharding.logical_rules(mesh, rules):
        for tok, p in inputs:
            logits, cache = step(params, tok, p, cache)
            outs.append(logits)
    leaf = cache['blocks'][0]['layers'][0]['k']
    assert leaf.sharding.spec == cache_sh['blocks'][0]['layers'][0]['k'].spec
    np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-4, rtol=1e-4)
