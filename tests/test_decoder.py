"""Oracles for the Llama-3 decoder: param counts, KV cache == full pass, causality by
gradients, packed-segment isolation, scan == unrolled, remat == plain, layer references."""

import dataclasses
import functools
import importlib.util
import math
import pathlib

import flax.linen as nn
import hlo_checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models

from codellm_jax import config as config_lib
from codellm_jax.decoding import phases
from codellm_jax.models import decoder, kv_cache, layers
from codellm_jax.models.model_config import RopeScaling

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Jitted (cfg static): eager op-by-op dispatch would dominate the test time.
_forward = jax.jit(decoder.forward, static_argnums=1)
_step = jax.jit(decoder.forward_with_cache, static_argnums=1)


def _decode_in_chunks(params, cfg, tokens_BxT, block_sizes, bounds, positions_BxT=None):
    """(logits [B, T, V], cache): `tokens` fed through an empty blocked cache in chunks
    [lo, hi) of `bounds` (contiguous from 0), at positions 0..T-1 (or `positions_BxT`).

    Slot i holds token i: each chunk is written by a call that sees the blocks up to the
    one holding its slots, as a decoding loop phase does.
    """
    b, t = tokens_BxT.shape
    pos = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions_BxT is None else positions_BxT
    cache = decoder.init_cache(cfg, b, block_sizes)
    starts = np.cumsum((0,) + tuple(block_sizes))
    outs = []
    for lo, hi in bounds:
        j = int(np.searchsorted(starts, lo, side='right')) - 1
        assert hi <= starts[j + 1], f'chunk {lo}..{hi} crosses a block boundary'
        view = phases.view(cache, j + 1, lo - starts[j])
        logits, view = _step(params, cfg, tokens_BxT[:, lo:hi], pos[:, lo:hi], view)
        cache = phases.merge(cache, view)
        outs.append(logits)
    return jnp.concatenate(outs, 1), cache


def _prefill_then_steps(prefill, t):
    """Chunk bounds: the first `prefill` tokens in one call, then one token per call."""
    return [(0, prefill)] + [(i, i + 1) for i in range(prefill, t)]


TINY = tiny_models.decoder_config(tiny_models.DECODER, max_seq_len=64, rope_theta=10000.0)


def _params(cfg, seed=0):
    return jax.jit(decoder.init_params, static_argnums=0)(cfg, jax.random.key(seed))


def _tokens(shape, seed=1, vocab=256):
    return jax.random.randint(jax.random.key(seed), shape, 1, vocab)


def _llama_config(size):
    spec = importlib.util.spec_from_file_location('llama3_cfg', ROOT / 'configs' / 'llama3.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return config_lib.model_config(mod.get_config(f'size={size}'))


def _expected_count(c):
    per_layer = (
        2 * c.d_model  # two norms
        + c.d_model * c.num_heads * c.head_dim * 2  # q, o
        + c.d_model * c.num_kv_heads * c.head_dim * 2  # k, v
        + 3 * c.d_model * c.d_ff  # gate, up, down
    )
    head = 0 if c.tie_embeddings else c.d_model * c.vocab_size
    return c.vocab_size * c.d_model + c.num_layers * per_layer + c.d_model + head


@pytest.mark.parametrize(
    'size, exact, published',
    [('8b', 8_030_261_248, 8.03e9), ('70b', 70_553_706_496, 70.55e9)],
)
def test_llama31_param_counts(size, exact, published):
    cfg = _llama_config(size)
    n = decoder.num_params(cfg)  # jax.eval_shape: nothing allocated
    assert n == _expected_count(cfg) == exact
    assert abs(n - published) / published < 0.005
    shapes = decoder.param_shapes(cfg)
    assert shapes['layers']['attn']['k']['kernel'].shape == (
        cfg.num_layers,
        cfg.d_model,
        8,
        128,
    )
    assert cfg.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_param_layout_and_tied():
    shapes = decoder.param_shapes(TINY)
    got = jax.tree.map(lambda x: x.shape, shapes)
    assert got == {
        'embed': {'embedding': (256, 64)},
        'layers': {
            'attn_norm': {'scale': (2, 64)},
            'attn': {
                'q': {'kernel': (2, 64, 4, 16)},
                'k': {'kernel': (2, 64, 2, 16)},
                'v': {'kernel': (2, 64, 2, 16)},
                'o': {'kernel': (2, 4, 16, 64)},
            },
            'mlp_norm': {'scale': (2, 64)},
            'mlp': {
                'gate': {'kernel': (2, 64, 128)},
                'up': {'kernel': (2, 64, 128)},
                'down': {'kernel': (2, 128, 64)},
            },
        },
        'final_norm': {'scale': (64,)},
        'lm_head': {'kernel': (64, 256)},
    }
    tied = dataclasses.replace(TINY, tie_embeddings=True)
    params = _params(tied)
    assert 'lm_head' not in params
    assert decoder.num_params(tied) == _expected_count(tied)
    # Tied logits are x @ E^T: zeroing the embedding row of token 7 zeroes logit 7.
    emb = params['embed']['embedding'].at[7].set(0.0)
    params = {**params, 'embed': {'embedding': emb}}
    logits = _forward(params, tied, _tokens((1, 5), vocab=7))
    np.testing.assert_array_equal(logits[..., 7], 0.0)


def _reference_forward(params, cfg, tokens_BxT):
    """Plain-numpy Llama forward (repeat_kv GQA, rotate_half RoPE) for one unpacked batch."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    x = p['embed']['embedding'][np.asarray(tokens_BxT)]
    b, t, _ = x.shape
    inv = layers.rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).astype(np.float64)
    ang = np.arange(t)[:, None] * inv[None]
    cos = np.cos(np.concatenate([ang, ang], -1))[None, :, None]
    sin = np.sin(np.concatenate([ang, ang], -1))[None, :, None]

    def rope(z):
        z1, z2 = np.split(z, 2, -1)
        return z * cos + np.concatenate([-z2, z1], -1) * sin

    def norm(z, s):
        return z / np.sqrt(np.mean(z**2, -1, keepdims=True) + cfg.norm_eps) * s

    lay = p['layers']
    rep = cfg.num_heads // cfg.num_kv_heads
    causal = np.tril(np.ones((t, t), bool))
    for i in range(cfg.num_layers):
        h = norm(x, lay['attn_norm']['scale'][i])
        q = rope(np.einsum('btd,dhk->bthk', h, lay['attn']['q']['kernel'][i]))
        k = rope(np.einsum('btd,dhk->bthk', h, lay['attn']['k']['kernel'][i]))
        v = np.einsum('btd,dhk->bthk', h, lay['attn']['v']['kernel'][i])
        k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
        s = np.einsum('bthk,bshk->bhts', q, k) / math.sqrt(cfg.head_dim)
        s = np.where(causal, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum('bhts,bshk->bthk', a, v)
        x = x + np.einsum('bthk,hkd->btd', o, lay['attn']['o']['kernel'][i])
        h = norm(x, lay['mlp_norm']['scale'][i])
        g = h @ lay['mlp']['gate']['kernel'][i]
        u = h @ lay['mlp']['up']['kernel'][i]
        x = x + ((g / (1 + np.exp(-g))) * u) @ lay['mlp']['down']['kernel'][i]
    x = norm(x, p['final_norm']['scale'])
    return x @ p['lm_head']['kernel']


@pytest.mark.parametrize('num_kv_heads', [4, 2, 1])
def test_forward_matches_numpy_reference(num_kv_heads):
    cfg = dataclasses.replace(
        TINY, num_kv_heads=num_kv_heads, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 16)
    )
    params = _params(cfg)
    tokens = _tokens((2, 12))
    got = _forward(params, cfg, tokens)
    want = _reference_forward(params, cfg, tokens)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_rope_llama3_scaling_matches_hf():
    torch = pytest.importorskip('torch')
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = RopeScaling(8.0, 1.0, 4.0, 8192)
    hf_cfg = LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        rope_scaling=dict(
            rope_type='llama3',
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        ),
    )
    hf_inv, _ = ROPE_INIT_FUNCTIONS['llama3'](hf_cfg, torch.device('cpu'))
    ours = layers.rope_inv_freq(128, 500000.0, scaling)
    np.testing.assert_allclose(ours, hf_inv.numpy(), rtol=1e-6)
    plain = layers.rope_inv_freq(128, 500000.0, None)
    assert not np.allclose(ours, plain)  # scaling really changes the low frequencies
    np.testing.assert_allclose(ours[:8], plain[:8], rtol=1e-6)  # high freqs kept


def _cfg(num_kv_heads, scan):
    return dataclasses.replace(TINY, num_kv_heads=num_kv_heads, scan_layers=scan)


KV_CASES = [(2, True), (2, False), (1, True), (1, False)]


@pytest.mark.parametrize('num_kv_heads, scan', KV_CASES)
def test_cache_decode_matches_forward(num_kv_heads, scan):
    cfg = _cfg(num_kv_heads, scan)
    params = _params(cfg)
    b, t = 2, 10
    tokens = _tokens((b, t))
    full = _forward(params, cfg, tokens)

    # Token by token from an empty cache of one block.
    got, _ = _decode_in_chunks(params, cfg, tokens, (16,), _prefill_then_steps(1, t))
    np.testing.assert_allclose(got, full, atol=1e-4, rtol=1e-4)

    # Prefill 6, then steps through two more blocks (each call sees the filled blocks only).
    got, cache = _decode_in_chunks(params, cfg, tokens, (6, 3, 7), _prefill_then_steps(6, t))
    np.testing.assert_allclose(got, full, atol=1e-4, rtol=1e-4)
    assert [len(blk['layers']) for blk in cache['blocks']] == [2, 2, 2]
    assert cache['blocks'][2]['layers'][0]['k'].shape == (b, num_kv_heads, 7, 16)
    assert cache['blocks'][2]['layers'][0]['v'].shape == (b, num_kv_heads, 16, 7)
    np.testing.assert_array_equal(cache['blocks'][2]['pos'], [[9, -1, -1, -1, -1, -1, -1]] * b)


@pytest.mark.parametrize('num_kv_heads, scan', KV_CASES)
def test_ragged_prefill_in_one_call(num_kv_heads, scan):
    cfg = _cfg(num_kv_heads, scan)
    params = _params(cfg)
    lengths = [3, 6, 1]
    total = 9
    seqs = _tokens((3, total), seed=5)
    pad = 6
    prompt = np.zeros((3, pad), np.int32)
    for r, n in enumerate(lengths):
        prompt[r, :n] = seqs[r, :n]
    prompt = jnp.asarray(prompt)
    cache = decoder.init_cache(cfg, 3, (pad, 4))
    prompt_pos = phases.prefill_positions(jnp.asarray(lengths), pad)  # pads at -1
    logits, first = _step(params, cfg, prompt, prompt_pos, phases.view(cache, 1, 0))
    cache = phases.merge(cache, first)
    got = {r: [logits[r, :n]] for r, n in enumerate(lengths)}
    # Continue every row at its own position len_b, feeding its true next tokens; all
    # rows write the same slot of block 1.
    for i in range(total - max(lengths)):
        pos = jnp.asarray([[n + i] for n in lengths])
        tok = jnp.asarray([[seqs[r, n + i]] for r, n in enumerate(lengths)])
        logits, view = _step(params, cfg, tok, pos, phases.view(cache, 2, i))
        cache = phases.merge(cache, view)
        for r in range(3):
            got[r].append(logits[r])
    full = _forward(params, cfg, seqs)  # causal: row r's prefix logits are its own
    for r, n in enumerate(lengths):
        want = full[r, : n + total - max(lengths)]
        np.testing.assert_allclose(jnp.concatenate(got[r], 0), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(cache['blocks'][0]['pos'][0], [0, 1, 2, -1, -1, -1])
    np.testing.assert_array_equal(
        cache['blocks'][1]['pos'][:, :3], [[3, 4, 5], [6, 7, 8], [1, 2, 3]]
    )


def test_chunks_after_a_prefill_and_per_layer_params_match_forward():
    """Chunks of T > 1 over a non-empty cache (new tokens see the cache and each other
    causally), from per-layer params; unstack -> stack is the identity."""
    cfg = _cfg(2, True)
    params = _params(cfg)
    per_layer = decoder.unstack_layers(params)
    assert 'layers' not in per_layer and sorted(k for k in per_layer if 'layers_' in k) == [
        'layers_0',
        'layers_1',
    ]
    restacked = jax.tree.leaves(decoder.stack_layers(per_layer))
    for a, b in zip(restacked, jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    shapes = decoder.unstack_layers(decoder.param_shapes(cfg))
    assert shapes['layers_1']['mlp']['down']['kernel'].shape == (cfg.d_ff, cfg.d_model)
    specs = decoder.unstack_layers(decoder.param_logical_axes(cfg), cfg.num_layers)
    assert specs['layers_1']['mlp']['down']['kernel'] == jax.sharding.PartitionSpec('mlp', 'embed')

    b, t = 2, 11
    tokens = _tokens((b, t), seed=7)
    full = _forward(params, cfg, tokens)
    bounds = [(0, 4), (4, 7), (7, 8), (8, 11)]
    got, _ = _decode_in_chunks(per_layer, cfg, tokens, (7, 4, 5), bounds)
    np.testing.assert_allclose(got, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('tied, fuse_qkv', [(False, False), (True, False), (False, True)])
def test_decode_layout_matches_forward(tied, fuse_qkv):
    """The decoding layout (kernels transposed, weight as the left matmul operand; q/k/v
    optionally fused) gives the full forward's logits through the cache, tied head too."""
    cfg = dataclasses.replace(_cfg(2, True), tie_embeddings=tied)
    params = _params(cfg)
    dec = decoder.decode_layout(params, fuse_qkv=fuse_qkv)
    h, k, dh, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.d_model
    attn, mlp = dec['layers_1']['attn'], dec['layers_1']['mlp']
    want_shapes = {'q': (h * dh, d), 'k': (k * dh, d), 'v': (k * dh, d), 'o': (d, h * dh)}
    if fuse_qkv:
        want_shapes = {'qkv': ((h + 2 * k) * dh, d), 'o': (d, h * dh)}
        wv = params['layers']['attn']['v']['kernel'][1].reshape(d, k * dh)
        np.testing.assert_array_equal(attn['qkv']['kernel_t'][(h + k) * dh :], wv.T)
    assert {n: v['kernel_t'].shape for n, v in attn.items()} == want_shapes
    assert mlp['down']['kernel_t'].shape == (d, cfg.d_ff)
    np.testing.assert_array_equal(
        attn['o']['kernel_t'], params['layers']['attn']['o']['kernel'][1].reshape(h * dh, d).T
    )
    assert ('lm_head' in dec) == (not tied)
    if not tied:
        assert dec['lm_head']['kernel_t'].shape == (cfg.vocab_size, d)
    # Idempotent; a fused layout is never split back.
    again = decoder.decode_layout(dec, fuse_qkv=fuse_qkv)
    assert jax.tree.structure(again) == jax.tree.structure(dec)
    if fuse_qkv:
        with pytest.raises(ValueError, match='cannot split a fused qkv'):
            decoder.decode_layout(dec)

    b, t = 3, 11
    tokens = _tokens((b, t), seed=3)
    full = _forward(params, cfg, tokens)
    bounds = [(0, 7)] + [(i, i + 1) for i in range(7, t)]
    got, _ = _decode_in_chunks(dec, cfg, tokens, (7, 4, 5), bounds)
    np.testing.assert_allclose(got, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('rows, num_in', [(1, 1), (8, 1), (40, 2)])
def test_dense_with_transposed_kernel_equals_kernel(rows, num_in):
    features = (3, 5)
    in_shape = (4, 6) if num_in == 2 else (24,)
    dense = layers.DenseGeneral(features, ('embed',) * (num_in + 2), num_in=num_in)
    x = jax.random.normal(jax.random.key(0), (rows, *in_shape))
    params = nn.unbox(dense.init(jax.random.key(1), x))['params']
    want = dense.apply({'params': params}, x)
    kernel_t = layers.transpose_kernel(params['kernel'], num_in)
    assert kernel_t.shape == (15, 24)
    got = dense.apply({'params': {'kernel_t': kernel_t}}, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r'kernel_t of .* expected \[fan_out, fan_in\]'):
        dense.apply({'params': {'kernel_t': kernel_t.T}}, x)


def test_cache_write_fills_the_same_slots_of_every_row_or_nothing():
    cache = jnp.zeros((3, 1, 5, 2))
    new = jnp.arange(3 * 2 * 2, dtype=jnp.float32).reshape(3, 1, 2, 2) + 1
    out = kv_cache.write(cache, new, jnp.int32(2), 2, jnp.zeros(1))
    np.testing.assert_array_equal(out[:, :, 2:4], new)
    np.testing.assert_array_equal(out[:, :, [0, 1, 4]], 0)
    # The value layout: slots on the last axis.
    out_v = kv_cache.write(jnp.zeros((3, 1, 2, 5)), jnp.swapaxes(new, 2, 3), 2, 3, jnp.zeros(1))
    np.testing.assert_array_equal(out_v, jnp.swapaxes(out, 2, 3))
    # Past the end: nothing is written (dynamic_update_slice alone would clamp and write).
    for index in (4, -1):
        out = kv_cache.write(cache + 7, new, jnp.int32(index), 2, jnp.zeros(1))
        np.testing.assert_array_equal(out, cache + 7)
    # NaN in the attention output stays visible in the written keys.
    out = kv_cache.write(cache, new, jnp.int32(0), 2, jnp.full(1, jnp.nan))
    assert bool(jnp.all(jnp.isnan(out[:, :, :2])))
    with pytest.raises(ValueError, match='writes 2 slots into a cache block of 1'):
        kv_cache.write(jnp.zeros((3, 1, 1, 2)), new, jnp.int32(0), 2, jnp.zeros(1))


def test_key_mask_hides_empty_slots_and_the_future():
    pos = jnp.asarray([[0, 1, -1, 3], [5, -1, 2, 7]])
    got = kv_cache.key_mask(pos, jnp.asarray([[1, -1], [6, 2]]))
    want = [
        [[1, 1, 0, 0], [0, 0, 0, 0]],
        [[1, 0, 1, 0], [0, 0, 1, 0]],
    ]
    np.testing.assert_array_equal(got, np.asarray(want, bool))


@pytest.mark.parametrize('fuse_qkv', [False, True])
def test_decode_loop_updates_the_cache_in_place(fuse_qkv):
    """The compiled decoding loop never copies or transposes a cache-sized buffer.

    Guards the layout and ordering choices of `layers.cached_attention` and
    `kv_cache.write`: each broken one shows up here as per-step copies.
    """
    cfg = dataclasses.replace(TINY, num_kv_heads=4, max_seq_len=256)
    params = decoder.decode_layout(_params(cfg), fuse_qkv=fuse_qkv)
    slots = 160
    cache = decoder.init_cache(cfg, 1, slots)
    step = functools.partial(decoder.forward_with_cache, cfg=cfg)
    hlo = hlo_checks.greedy_loop_hlo(step, params, cache)
    cache_elems = cfg.num_kv_heads * cfg.head_dim * slots
    hlo_checks.assert_loop_bodies_copy_less_than(hlo, cache_elems)
    # Nor a weight: the decoding layout is consumed as stored.
    weight_elems = cfg.d_model * cfg.num_kv_heads * cfg.head_dim
    hlo_checks.assert_loop_bodies_copy_less_than(hlo, weight_elems)


def test_chunked_causal_attention_equals_one_block():
    """Query chunks (last one short) over packed segments: same logits and gradients."""
    cfg = dataclasses.replace(TINY, attention_chunk=0)
    params = _params(cfg)
    tokens = _tokens((2, 11), seed=3)
    segments = jnp.asarray([[1] * 4 + [2] * 7, [1] * 9 + [0] * 2])

    def loss(p, c):
        logits = decoder.forward(p, c, tokens, segment_ids_BxT=segments)
        return jnp.sum(jax.nn.log_softmax(logits)[..., 0] * (segments > 0))

    want_logits = _forward(params, cfg, tokens, None, segments)
    want_grads = jax.grad(loss)(params, cfg)
    for chunk in (3, 4, 11, 64):
        chunked = dataclasses.replace(cfg, attention_chunk=chunk)
        got = _forward(params, chunked, tokens, None, segments)
        np.testing.assert_allclose(got, want_logits, atol=1e-5, rtol=1e-5)
        grads = jax.grad(loss)(params, chunked)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='attention_chunk'):
        dataclasses.replace(cfg, attention_chunk=-1)


def test_chunked_attention_vjp_equals_one_block_vjp():
    """The chunked core's hand-written backward: dq, dk, dv of GQA attention over packed
    segments with padding equal autodiff through one softmax block, for any cotangent."""
    b, t, h, kv, dh = 2, 13, 4, 2, 8
    q, k, v, cot = (
        jax.random.normal(jax.random.key(i), shape)
        for i, shape in enumerate([(b, t, h, dh), (b, t, kv, dh), (b, t, kv, dh), (b, t, h, dh)])
    )
    segments = jnp.asarray([[1] * 5 + [2] * 8, [1] * 9 + [0] * 4])
    mask = layers.causal_segment_mask(segments, b, t)
    want_out, want_vjp = jax.vjp(
        lambda q, k, v: layers.dot_product_attention(q, k, v, mask), q, k, v
    )
    want_grads = want_vjp(cot)
    for chunk in (1, 5, 13):
        got_out, got_vjp = jax.vjp(
            lambda q, k, v, c=chunk: layers.causal_attention_in_chunks(q, k, v, mask, c), q, k, v
        )
        np.testing.assert_allclose(got_out, want_out, atol=1e-5, rtol=1e-5)
        for got, want in zip(got_vjp(cot), want_grads, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causality_by_gradients():
    params = _params(TINY)
    t = 8
    tokens = jnp.arange(10, 10 + t)[None]  # distinct ids: embedding row == position
    r = jax.random.normal(jax.random.key(3), (TINY.vocab_size,))

    def per_position(emb):
        p = {**params, 'embed': {'embedding': emb}}
        return _forward(p, TINY, tokens)[0] @ r  # [T]

    jac_TxVxD = jax.jacrev(per_position)(params['embed']['embedding'])
    mag_TxS = np.abs(np.asarray(jac_TxVxD[:, 10 : 10 + t])).sum(-1)
    future = np.triu(np.ones((t, t), bool), 1)
    assert np.all(mag_TxS[future] == 0.0)
    assert np.all(mag_TxS[~future] > 0.0)


def test_packed_segments_are_isolated():
    params = _params(TINY)
    seg = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0, 0]])
    pos = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0, 1]])
    tokens = _tokens((1, 9), seed=7)
    logits = _forward(params, TINY, tokens, pos, seg)
    # Each document alone gives the same logits as inside the pack.
    np.testing.assert_allclose(
        logits[:, 3:7], _forward(params, TINY, tokens[:, 3:7]), atol=1e-5, rtol=1e-5
    )
    np.testing.assert_allclose(
        logits[:, :3], _forward(params, TINY, tokens[:, :3]), atol=1e-5, rtol=1e-5
    )
    # Changing document 1 leaves document 2 untouched (and does change document 1).
    other = tokens.at[0, :3].set((tokens[0, :3] + 1) % TINY.vocab_size)
    logits2 = _forward(params, TINY, other, pos, seg)
    np.testing.assert_array_equal(logits2[:, 3:], logits[:, 3:])
    assert not np.allclose(logits2[:, :3], logits[:, :3])


def _loss_and_grads(cfg, params, tokens):
    def loss(p):
        return jnp.mean(jax.nn.log_softmax(_forward(p, cfg, tokens))[..., 0])

    return jax.jit(jax.value_and_grad(loss))(params)


@pytest.mark.parametrize(
    'variant',
    [
        dict(scan_layers=False),
        dict(remat_policy='full'),
        dict(remat_policy='dots'),
        dict(remat_policy='dots_no_batch', scan_layers=False),
    ],
)
def test_scan_and_remat_variants_equal(variant):
    params = _params(TINY)
    tokens = _tokens((2, 8))
    base_loss, base_grads = _loss_and_grads(TINY, params, tokens)
    loss, grads = _loss_and_grads(dataclasses.replace(TINY, **variant), params, tokens)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-5, atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, base_grads
    )


def test_bf16_compute_and_params():
    cfg = dataclasses.replace(TINY, dtype='bfloat16', param_dtype='bfloat16')
    params = _params(cfg)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    tokens = _tokens((2, 8))
    logits = _forward(params, cfg, tokens)
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    f32 = _forward(jax.tree.map(lambda x: x.astype(jnp.float32), params), TINY, tokens)
    # bf16 has ~3 significant digits; the argmax of most positions agrees with f32.
    assert np.mean(np.argmax(logits, -1) == np.argmax(f32, -1)) > 0.8
    cache = decoder.init_cache(cfg, 2, 8)
    assert cache['blocks'][0]['layers'][0]['k'].dtype == jnp.bfloat16


def test_attention_core_against_brute_force():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 5, 6, 8)).astype(np.float32)
    k = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
    v = rng.normal(size=(2, 7, 3, 8)).astype(np.float32)
    mask = rng.random((2, 5, 7)) < 0.6
    mask[..., 0] = True
    got = layers.dot_product_attention(q, k, v, mask)
    want = np.zeros_like(q)
    for b in range(2):
        for t in range(5):
            for h in range(6):
                kh = h // 2
                s = k[b, :, kh] @ q[b, t, h] / math.sqrt(8)
                s = np.where(mask[b, t], s, -np.inf)
                a = np.exp(s - s.max())
                want[b, t, h] = (a / a.sum()) @ v[b, :, kh]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_rmsnorm_matches_formula():
    x = np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)
    mod = layers.RMSNorm(eps=1e-6)
    variables = mod.init(jax.random.key(0), x)
    scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
    got = mod.apply({'params': {'scale': scale}}, x)
    want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    boxed = variables['params']['scale']
    assert tuple(boxed.names) == ('embed',)
    np.testing.assert_array_equal(boxed.unbox(), np.ones(8))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match='remat_policy'):
        decoder.init_params(dataclasses.replace(TINY, remat_policy='some'), jax.random.key(0))
    with pytest.raises(ValueError, match='max_seq_len'):
        decoder.init_cache(TINY, 1, TINY.max_seq_len + 1)
    with pytest.raises(ValueError, match='num_kv_heads'):
        dataclasses.replace(TINY, num_kv_heads=3)
    with pytest.raises(ValueError, match='blocks'):
        decoder.forward_with_cache(
            _params(TINY), TINY, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32), {}
        )
    with pytest.raises(ValueError, match='rows but the tokens have 2'):
        decoder.forward_with_cache(
            _params(TINY),
            TINY,
            jnp.zeros((2, 1), jnp.int32),
            jnp.zeros((2, 1), jnp.int32),
            decoder.init_cache(TINY, 1, 4),
        )
    with pytest.raises(ValueError, match='positions shape'):
        decoder.forward_with_cache(
            _params(TINY),
            TINY,
            jnp.zeros((1, 2), jnp.int32),
            jnp.zeros((1, 3), jnp.int32),
            decoder.init_cache(TINY, 1, 4),
        )
