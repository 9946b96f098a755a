"""T5 / CodeT5 encoder-decoder: sizes, bucket oracle, KV cache, causality, padding, HF parity."""

import dataclasses
import functools
import pathlib

import hlo_checks
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codellm_jax import config as config_lib
from codellm_jax.decoding import phases
from codellm_jax.models import encoder_decoder as ed
from codellm_jax.models import t5_layers
from codellm_jax.models.model_config import EncoderDecoderConfig

_CONFIG = pathlib.Path(__file__).resolve().parents[1] / 'configs' / 'codet5.py'

_TINY = EncoderDecoderConfig(
    vocab_size=97,
    d_model=32,
    num_encoder_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    head_dim=8,
    d_ff=48,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
    max_seq_len=64,
)


def _cfg(feed_forward='relu', **kw):
    tie = feed_forward == 'relu'
    return dataclasses.replace(_TINY, feed_forward=feed_forward, tie_embeddings=tie, **kw)


# Jitted entry points (cfg static): compiled once per config and shape, not run op by op.
_encode = jax.jit(ed.encode, static_argnums=1)
_decode = jax.jit(ed.decode, static_argnums=1)
_forward = jax.jit(ed.forward, static_argnums=1)
_step = jax.jit(ed.decode_with_cache, static_argnums=1)


def _decode_in_phases(params, cfg, tokens_BxT, cache, calls):
    """(logits [B, T, V], cache): `tokens` fed through `cache` at positions 0..T-1, one call
    per (lo, hi, blocks, index) of `calls`: tokens [lo, hi) with a view of the first
    `blocks` blocks writing at `index` of the last one, as a decoding loop phase does."""
    pos = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    got = []
    for lo, hi, blocks, index in calls:
        view = phases.view(cache, blocks, index)
        logits, view = _step(params, cfg, tokens_BxT[:, lo:hi], pos[:, lo:hi], view)
        cache = phases.merge(cache, view)
        got.append(logits)
    return jnp.concatenate(got, axis=1), cache


@functools.cache
def _params(cfg):
    return jax.jit(ed.init_params, static_argnums=0)(cfg, jax.random.key(0))


def _tokens(seed, shape, vocab=_TINY.vocab_size):
    return jnp.asarray(np.random.default_rng(seed).integers(1, vocab, shape), jnp.int32)


def _load(arg):
    return config_lib.model_config(config_lib.load_config(f'{_CONFIG}:{arg}'))


# --- sizes and configs ------------------------------------------------------------------


def _expected_count(v, d, enc_layers, dec_layers, h, dh, f, buckets=32):
    attn = 4 * d * h * dh
    mlp = 2 * d * f
    enc = enc_layers * (attn + mlp + 2 * d) + buckets * h + d
    dec = dec_layers * (2 * attn + mlp + 3 * d) + buckets * h + d
    return v * d + enc + dec


def test_codet5_base_param_count():
    cfg = _load('size=base')
    n = ed.num_params(cfg)
    assert n == _expected_count(32100, 768, 12, 12, 12, 64, 3072) == 222_882_048
    assert abs(n - 222.9e6) / 222.9e6 < 0.005


def test_codet5_small_param_count():
    cfg = _load('size=small')
    n = ed.num_params(cfg)
    assert n == _expected_count(32100, 512, 6, 6, 8, 64, 2048) == 60_492_288
    assert abs(n - 60.5e6) / 60.5e6 < 0.005


def test_configs_build_and_reject_unknown_size():
    for size in ('tiny', 'small', 'base'):
        cfg = _load(f'size={size}')
        assert isinstance(cfg, EncoderDecoderConfig)
    assert config_lib.load_config(f'{_CONFIG}:size=tiny').model_kind == 'encoder_decoder'
    with pytest.raises(ValueError, match="Unknown size 'large'"):
        _load('size=large')


def test_param_layout_and_logical_axes():
    cfg = _cfg('gated-gelu')
    shapes = ed.param_shapes(cfg)
    specs = ed.param_logical_axes(cfg)
    lay = shapes['decoder']['layers']
    assert lay['cross_attn']['q']['kernel'].shape == (3, 32, 4, 8)
    assert lay['self_attn']['o']['kernel'].shape == (3, 4, 8, 32)
    assert lay['mlp']['wi_0']['kernel'].shape == (3, 32, 48)
    assert lay['mlp']['wo']['kernel'].shape == (3, 48, 32)
    assert shapes['encoder']['rel_bias']['embedding'].shape == (8, 4)
    assert shapes['lm_head']['kernel'].shape == (32, 97)
    assert tuple(specs['encoder']['layers']['attn']['k']['kernel']) == (
        'layers',
        'embed',
        'heads',
        'head_dim',
    )
    assert tuple(specs['decoder']['layers']['mlp']['wo']['kernel']) == ('layers', 'mlp', 'embed')
    assert tuple(specs['encoder']['rel_bias']['embedding']) == ('rel_buckets', 'heads')
    assert tuple(specs['shared']['embedding']) == ('vocab', 'embed')
    assert 'lm_head' not in ed.param_shapes(_cfg('relu'))


# --- relative position buckets ----------------------------------------------------------


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 12), (16, 20)])
def test_relative_position_bucket_matches_hf(bidirectional, num_buckets, max_distance):
    torch = pytest.importorskip('torch')
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = np.arange(-700, 701)
    want = T5Attention._relative_position_bucket(
        torch.tensor(rel),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    ).numpy()
    got = t5_layers.relative_position_bucket(
        jnp.asarray(rel), bidirectional, num_buckets, max_distance
    )
    np.testing.assert_array_equal(np.asarray(got), want)


def test_relative_position_bucket_hand_cases():
    # Bidirectional, 32 buckets: 16 per direction, exact below 8, log-spaced to 128.
    rel = jnp.array([0, -1, -7, -8, -128, -1000, 1, 7, 200])
    got = t5_layers.relative_position_bucket(rel, True, 32, 128)
    np.testing.assert_array_equal(np.asarray(got), [0, 1, 7, 8, 15, 15, 17, 23, 31])
    # Unidirectional: keys after the query share bucket 0.
    got = t5_layers.relative_position_bucket(jnp.array([5, 0, -3, -500]), False, 32, 128)
    np.testing.assert_array_equal(np.asarray(got), [0, 0, 3, 31])


# --- KV cache equals the full decode ----------------------------------------------------


def _encoded(cfg, params, batch, src_len=9, pad_from=6):
    enc = _tokens(1, (batch, src_len))
    enc = enc.at[-1, pad_from:].set(0)
    mask = enc != 0
    return _encode(params, cfg, enc, mask), mask


@pytest.mark.parametrize('feed_forward', ['relu', 'gated-gelu'])
@pytest.mark.parametrize('n', [1, 2])
def test_cache_step_by_step_and_prefill_equal_full_decode(feed_forward, n):
    cfg = _cfg(feed_forward)
    params = _params(cfg)
    encoded, mask = _encoded(cfg, params, batch=2)
    t = 7
    dec = _tokens(2, (2 * n, t))
    # Full pass with each decoder row paired to its encoder row by explicit repetition.
    want = _decode(params, cfg, dec, jnp.repeat(encoded, n, axis=0), jnp.repeat(mask, n, axis=0))
    # B' = n*B directly (shared encoder rows) gives the same.
    np.testing.assert_allclose(_decode(params, cfg, dec, encoded, mask), want, atol=1e-5)

    cache = ed.init_cache(params, cfg, encoded, mask, batch_size=2 * n, block_sizes=t + 2)
    assert len(cache['cross']['layers']) == 3 and len(cache['blocks'][0]['layers']) == 3
    assert cache['cross']['layers'][2]['k'].shape == (2, 4, 9, 8)
    assert cache['blocks'][0]['layers'][2]['v'].shape == (2 * n, 4, 8, t + 2)
    got = []
    for i in range(t):
        logits, cache = _step(params, cfg, dec[:, i : i + 1], jnp.full((2 * n, 1), i), cache)
        got.append(logits)
    np.testing.assert_allclose(jnp.concatenate(got, axis=1), want, atol=1e-4)

    # Multi-token prefill of 4 into block 0, then 1-token steps through blocks 1 and 2,
    # each call seeing the filled blocks only.
    cache = ed.init_cache(params, cfg, encoded, mask, batch_size=2 * n, block_sizes=(4, 2, 1))
    calls = ((0, 4, 1, 0), (4, 5, 2, 0), (5, 6, 2, 1), (6, 7, 3, 0))
    got, cache = _decode_in_phases(params, cfg, dec, cache, calls)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_array_equal(cache['blocks'][1]['pos'], [[4, 5]] * (2 * n))


@pytest.mark.parametrize('tied', [False, True])
def test_decode_layout_matches_full_decode(tied):
    """The decoding layout (per-layer decoder, step kernels transposed) gives the full
    decoder's logits through the cache; cross k/v kernels stay for `init_cache`."""
    cfg = dataclasses.replace(_cfg('gated-gelu'), tie_embeddings=tied)
    params = _params(cfg)
    dec_params = ed.decode_layout(params)
    layer = dec_params['decoder']['layers_2']
    h, dh, d = cfg.num_heads, cfg.head_dim, cfg.d_model
    assert layer['self_attn']['k']['kernel_t'].shape == (h * dh, d)
    assert layer['cross_attn']['o']['kernel_t'].shape == (d, h * dh)
    assert layer['cross_attn']['v']['kernel'].shape == (d, h, dh)
    assert layer['mlp']['wo']['kernel_t'].shape == (d, cfg.d_ff)
    assert ('lm_head' in dec_params) == (not tied)
    assert 'layers' in dec_params['encoder']  # the encoder stays stacked
    again = ed.decode_layout(dec_params)
    assert jax.tree.structure(again) == jax.tree.structure(dec_params)

    encoded, mask = _encoded(cfg, params, batch=2)
    t = 6
    tokens = _tokens(2, (2, t))
    want = _decode(params, cfg, tokens, encoded, mask)
    cache = ed.init_cache(dec_params, cfg, encoded, mask, batch_size=2, block_sizes=(3, 4))
    calls = ((0, 3, 1, 0), (3, 4, 2, 0), (4, 5, 2, 1), (5, 6, 2, 2))
    got, _ = _decode_in_phases(dec_params, cfg, tokens, cache, calls)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_cache_ragged_prefill_then_per_row_steps():
    cfg = _cfg('relu')
    params = _params(cfg)
    encoded, mask = _encoded(cfg, params, batch=2)
    dec = _tokens(3, (2, 8))
    want = _decode(params, cfg, dec, encoded, mask)
    lens = np.array([3, 5])
    prompt = jnp.where(jnp.arange(5)[None] < lens[:, None], dec[:, :5], 0)  # right-padded
    cache = ed.init_cache(params, cfg, encoded, mask, batch_size=2, block_sizes=(5, 3))
    prompt_pos = phases.prefill_positions(jnp.asarray(lens), 5)  # pads at -1
    logits, view = _step(params, cfg, prompt, prompt_pos, phases.view(cache, 1, 0))
    cache = phases.merge(cache, view)
    for b in range(2):
        np.testing.assert_allclose(logits[b, : lens[b]], want[b, : lens[b]], atol=1e-4)
    for k in range(3):
        pos = lens + k
        tok = dec[jnp.arange(2), pos][:, None]
        view = phases.view(cache, 2, k)  # every row writes slot k of block 1
        logits, view = _step(params, cfg, tok, jnp.asarray(pos)[:, None], view)
        cache = phases.merge(cache, view)
        np.testing.assert_allclose(logits[:, 0], want[jnp.arange(2), pos], atol=1e-4)


def test_decode_loop_updates_the_cache_in_place():
    """The compiled decoding loop never copies or transposes a cache-sized buffer (self
    blocks or cross-attention keys/values): the head-major cache layout and the per-layer
    in-place writes. Token-major [B, S, H, Dh] caches were copied transposed every step."""
    cfg = dataclasses.replace(_cfg('relu'), max_seq_len=256)
    params = ed.decode_layout(_params(cfg))
    encoded, mask = _encoded(cfg, _params(cfg), batch=1, src_len=96, pad_from=90)
    slots = 160
    cache = ed.init_cache(params, cfg, encoded, mask, 1, slots)
    step = functools.partial(ed.decode_with_cache, cfg=cfg)
    hlo = hlo_checks.greedy_loop_hlo(step, params, cache)
    smallest = cfg.num_heads * cfg.head_dim * 96  # the cross keys of one row
    hlo_checks.assert_loop_bodies_copy_less_than(hlo, smallest)


def test_cache_batch_must_be_multiple_of_encoder_batch():
    cfg = _cfg('relu')
    params = _params(cfg)
    encoded, mask = _encoded(cfg, params, batch=2)
    with pytest.raises(ValueError, match='not a multiple of the encoder batch 2'):
        ed.init_cache(params, cfg, encoded, mask, batch_size=3, block_sizes=4)
    with pytest.raises(ValueError, match='exceeds max_seq_len'):
        ed.init_cache(params, cfg, encoded, mask, batch_size=2, block_sizes=(60, 5))
    with pytest.raises(ValueError, match='not a multiple of encoder batch 2'):
        ed.decode(params, cfg, _tokens(0, (3, 4)), encoded, mask)


# --- causality, padding, segments -------------------------------------------------------


def _decoder_from_embeddings(cfg, params, x_BxTxD, encoded, mask, segment_ids=None):
    def run(module, x):
        b, t = x.shape[:2]
        self_mask = jnp.tril(jnp.ones((t, t), bool))[None]
        if segment_ids is not None:
            self_mask = self_mask & (segment_ids[:, :, None] == segment_ids[:, None, :])
        pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        y, _ = module.decoder(x, encoded, ed._cross_mask(mask, b), self_mask, pos)
        return module._logits(y)

    return ed.EncoderDecoder(cfg).apply({'params': params}, x_BxTxD, method=run)


def _dependency(fn, x_1xTxD):
    """[T_out, T_in] bool: does output position t depend on input position s?"""
    jac = jax.jit(jax.jacrev(lambda x: fn(x)[0].sum(-1)))(x_1xTxD)  # [T, 1, T, D]
    return np.asarray(jnp.abs(jac[:, 0]).sum(-1) > 0)


@pytest.mark.parametrize('feed_forward', ['relu', 'gated-gelu'])
def test_decoder_is_causal_by_gradients(feed_forward):
    cfg = _cfg(feed_forward)
    params = _params(cfg)
    encoded, mask = _encoded(cfg, params, batch=1)
    x = jax.random.normal(jax.random.key(5), (1, 6, cfg.d_model))
    dep = _dependency(lambda x: _decoder_from_embeddings(cfg, params, x, encoded, mask), x)
    np.testing.assert_array_equal(dep, np.tril(np.ones((6, 6), bool)))
    seg = jnp.array([[1, 1, 1, 2, 2, 0]])
    dep = _dependency(lambda x: _decoder_from_embeddings(cfg, params, x, encoded, mask, seg), x)
    same = np.asarray(seg[0][:, None] == seg[0][None, :])
    np.testing.assert_array_equal(dep, np.tril(np.ones((6, 6), bool)) & same)


def test_segment_ids_match_separate_sequences():
    cfg = _cfg('relu')
    params = _params(cfg)
    encoded, mask = _encoded(cfg, params, batch=1)
    a, b = _tokens(7, (1, 4)), _tokens(8, (1, 3))
    packed = jnp.concatenate([a, b], axis=1)
    seg = jnp.array([[1, 1, 1, 1, 2, 2, 2]])
    pos = jnp.array([[0, 1, 2, 3, 0, 1, 2]])
    got = _decode(params, cfg, packed, encoded, mask, seg, pos)
    np.testing.assert_allclose(got[:, :4], _decode(params, cfg, a, encoded, mask), atol=1e-5)
    np.testing.assert_allclose(got[:, 4:], _decode(params, cfg, b, encoded, mask), atol=1e-5)


def test_packed_seq2seq_matches_separate_examples():
    cfg = _cfg('gated-gelu')
    params = _params(cfg)
    a1, a2 = _tokens(11, (1, 4)), _tokens(12, (1, 3))
    b1, b2 = _tokens(13, (1, 3)), _tokens(14, (1, 4))
    enc = jnp.concatenate([a1, a2, jnp.zeros((1, 2), jnp.int32)], axis=1)
    enc_seg = jnp.array([[1, 1, 1, 1, 2, 2, 2, 0, 0]])
    dec = jnp.concatenate([b1, b2, jnp.zeros((1, 1), jnp.int32)], axis=1)
    dec_seg = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
    dec_pos = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
    got = _forward(params, cfg, enc, dec, None, dec_seg, dec_pos, enc_seg)
    np.testing.assert_allclose(got[:, :3], _forward(params, cfg, a1, b1), atol=1e-5)
    np.testing.assert_allclose(got[:, 3:7], _forward(params, cfg, a2, b2), atol=1e-5)
    encoded = _encode(params, cfg, enc, None, enc_seg)
    np.testing.assert_allclose(encoded[:, 4:7], _encode(params, cfg, a2), atol=1e-5)


def test_encoder_padding_is_isolated_and_bidirectional():
    cfg = _cfg('gated-gelu')
    params = _params(cfg)
    enc = _tokens(1, (2, 9))
    mask = jnp.arange(9)[None] < jnp.array([[9], [5]])
    dec = _tokens(2, (2, 4))
    out = _forward(params, cfg, enc, dec, mask)
    enc2 = jnp.where(mask, enc, _tokens(9, (2, 9)))  # change only padded positions
    out2 = _forward(params, cfg, enc2, dec, mask)
    np.testing.assert_allclose(out2, out, atol=1e-6)
    e1, e2 = _encode(params, cfg, enc, mask), _encode(params, cfg, enc2, mask)
    np.testing.assert_allclose(e2[1, :5], e1[1, :5], atol=1e-6)
    # Default mask = tokens != 0 behaves the same as the explicit one.
    np.testing.assert_allclose(_forward(params, cfg, jnp.where(mask, enc, 0), dec), out, atol=1e-6)
    # The encoder is bidirectional: a real token changes earlier real positions.
    e3 = _encode(params, cfg, enc.at[0, 8].set(enc[0, 8] % 96 + 1), mask)
    assert np.abs(np.asarray(e3[0, 0] - e1[0, 0])).max() > 1e-4


# --- layer stacking, remat, dtypes ------------------------------------------------------


def _loss_and_grads(cfg, params):
    enc, dec = _tokens(1, (2, 9)), _tokens(2, (2, 5))

    def loss(p, c):
        return jnp.mean(ed.forward(p, c, enc, dec) ** 2)

    return jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, cfg)


def _assert_same_loss_and_grads(got, want):
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), got[1], want[1])


@pytest.mark.parametrize('feed_forward', ['relu', 'gated-gelu'])
def test_scan_and_unrolled_agree(feed_forward):
    cfg = _cfg(feed_forward)
    params = _params(cfg)
    want = _loss_and_grads(cfg, params)
    got = _loss_and_grads(dataclasses.replace(cfg, scan_layers=False), params)
    _assert_same_loss_and_grads(got, want)


@pytest.mark.slow
@pytest.mark.parametrize('remat', ['full', 'dots', 'dots_no_batch'])
def test_remat_policies_agree(remat):
    cfg = _cfg('gated-gelu')
    params = _params(cfg)
    want = _loss_and_grads(cfg, params)
    other = dataclasses.replace(cfg, remat_policy=remat)
    _assert_same_loss_and_grads(_loss_and_grads(other, params), want)


def test_bfloat16_compute_runs_with_float32_logits():
    cfg = _cfg('relu', dtype='bfloat16', param_dtype='bfloat16')
    params = _params(cfg)
    assert params['shared']['embedding'].dtype == jnp.bfloat16
    logits = _forward(params, cfg, _tokens(1, (2, 9)), _tokens(2, (2, 5)))
    assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())


def test_bad_inputs_are_named():
    cfg = _cfg('relu')
    params = _params(cfg)
    with pytest.raises(ValueError, match='remat_policy'):
        ed.init_params(dataclasses.replace(cfg, remat_policy='some'), jax.random.key(0))
    with pytest.raises(ValueError, match='feed_forward'):
        dataclasses.replace(cfg, feed_forward='swiglu')
    with pytest.raises(ValueError, match='tokens_BxS must be an integer array'):
        ed.encode(params, cfg, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match=r'mask_BxS has shape \(2, 4\)'):
        ed.encode(params, cfg, _tokens(0, (2, 3)), jnp.ones((2, 4), bool))


# --- whole-model parity with Hugging Face T5 (independent weight mapping) ---------------


def _from_hf(sd, cfg):
    d, h, k = cfg.d_model, cfg.num_heads, cfg.head_dim

    def attn(prefix):
        out = {n: {'kernel': sd[f'{prefix}.{n}.weight'].T.reshape(d, h, k)} for n in 'qkv'}
        out['o'] = {'kernel': sd[f'{prefix}.o.weight'].T.reshape(h, k, d)}
        return out

    def mlp(prefix):
        names = ['wi', 'wo'] if cfg.feed_forward == 'relu' else ['wi_0', 'wi_1', 'wo']
        return {n: {'kernel': sd[f'{prefix}.DenseReluDense.{n}.weight'].T} for n in names}

    def norm(key):
        return {'scale': sd[key + '.layer_norm.weight']}

    def stack(layers):
        return jax.tree.map(lambda *a: np.stack(a), *layers)

    e, dd = 'encoder.block', 'decoder.block'
    enc = stack(
        [
            {
                'attn_norm': norm(f'{e}.{i}.layer.0'),
                'attn': attn(f'{e}.{i}.layer.0.SelfAttention'),
                'mlp_norm': norm(f'{e}.{i}.layer.1'),
                'mlp': mlp(f'{e}.{i}.layer.1'),
            }
            for i in range(cfg.num_encoder_layers)
        ]
    )
    dec = stack(
        [
            {
                'self_attn_norm': norm(f'{dd}.{i}.layer.0'),
                'self_attn': attn(f'{dd}.{i}.layer.0.SelfAttention'),
                'cross_attn_norm': norm(f'{dd}.{i}.layer.1'),
                'cross_attn': attn(f'{dd}.{i}.layer.1.EncDecAttention'),
                'mlp_norm': norm(f'{dd}.{i}.layer.2'),
                'mlp': mlp(f'{dd}.{i}.layer.2'),
            }
            for i in range(cfg.num_decoder_layers)
        ]
    )
    rel = 'layer.0.SelfAttention.relative_attention_bias.weight'
    params = {
        'shared': {'embedding': sd['shared.weight']},
        'encoder': {
            'rel_bias': {'embedding': sd[f'{e}.0.{rel}']},
            'layers': enc,
            'final_norm': {'scale': sd['encoder.final_layer_norm.weight']},
        },
        'decoder': {
            'rel_bias': {'embedding': sd[f'{dd}.0.{rel}']},
            'layers': dec,
            'final_norm': {'scale': sd['decoder.final_layer_norm.weight']},
        },
    }
    if not cfg.tie_embeddings:
        params['lm_head'] = {'kernel': sd['lm_head.weight'].T}
    return params


@pytest.mark.parametrize('feed_forward', ['relu', 'gated-gelu'])
def test_matches_hf_t5(feed_forward):
    torch = pytest.importorskip('torch')
    transformers = pytest.importorskip('transformers')
    cfg = _cfg(feed_forward)
    hf_cfg = transformers.T5Config(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        d_kv=cfg.head_dim,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        relative_attention_num_buckets=cfg.relative_attention_num_buckets,
        relative_attention_max_distance=cfg.relative_attention_max_distance,
        feed_forward_proj=feed_forward,
        tie_word_embeddings=cfg.tie_embeddings,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    params = _from_hf(sd, cfg)
    assert jax.tree.structure(params) == jax.tree.structure(_params(cfg))
    # Lengths beyond max_distance exercise the logarithmic buckets.
    enc = np.array(_tokens(1, (2, 20)))
    enc[1, 13:] = 0
    dec = np.array(_tokens(2, (2, 16)))
    with torch.no_grad():
        want = model(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc != 0).long(),
            decoder_input_ids=torch.tensor(dec),
        ).logits.numpy()
    got = _forward(params, cfg, jnp.asarray(enc), jnp.asarray(dec))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


# --- sharded on a 1x2x4 fake mesh equals one device ------------------------------------


def test_sharded_forward_and_cache_match_single_device():
    from codellm_jax import axes, sharding

    cfg = dataclasses.replace(_cfg('relu'), vocab_size=96)  # vocab splits 4-way over 'tensor'
    mesh = sharding.make_mesh(((1, 2, 4), axes.MESH_AXES))
    rules = sharding.model_rules(axes.DEFAULT_RULES, cfg, mesh)
    params, shardings = sharding.init_sharded(
        functools.partial(ed.init_params_boxed, cfg), jax.random.key(0), mesh, rules
    )
    assert tuple(shardings['encoder']['layers']['attn']['q']['kernel'].spec) == (
        None,
        'fsdp',
        'tensor',
        None,
    )
    host = jax.device_get(params)
    enc = _tokens(1, (2, 9), vocab=96).at[1, 6:].set(0)
    dec = _tokens(2, (2, 5), vocab=96)
    want = _forward(host, cfg, enc, dec)
    cache0 = ed.init_cache(host, cfg, _encode(host, cfg, enc), enc != 0, 4, 5)
    want_step, _ = _step(host, cfg, jnp.repeat(dec, 2, 0), jnp.full((4, 5), jnp.arange(5)), cache0)

    batch = sharding.logical_sharding(mesh, rules, axes.BATCH, axes.LENGTH)
    enc_s, dec_s = jax.device_put(enc, batch), jax.device_put(dec, batch)
    with sharding.logical_rules(mesh, rules):
        got = jax.jit(ed.forward, static_argnums=1)(params, cfg, enc_s, dec_s)
        encoded = jax.jit(ed.encode, static_argnums=1)(params, cfg, enc_s)
        cache = jax.jit(ed.init_cache, static_argnums=(1, 4, 5))(
            params, cfg, encoded, enc_s != 0, 4, 5
        )
        cache_sh = jax.tree.map(
            lambda s: jax.sharding.NamedSharding(mesh, sharding.mesh_spec(s, rules)),
            ed.cache_logical_axes(cfg),
            is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec),
        )
        cache = jax.device_put(cache, cache_sh)
        got_step, new_cache = jax.jit(ed.decode_with_cache, static_argnums=1)(
            params, cfg, jnp.repeat(dec, 2, 0), jnp.full((4, 5), jnp.arange(5)), cache
        )
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_step, want_step, atol=1e-5)
    assert jax.tree.structure(new_cache) == jax.tree.structure(cache0)
