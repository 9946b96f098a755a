"""HF interop: logits parity with transformers (PyTorch, f32, eager) on tiny random models,
sharded safetensors, export → import → export identity, HF loading our export, our
pretrained format, the convert command, and every bad-input error.

  .venv/bin/python -m pytest tests/test_interop.py -q
"""

import dataclasses
import json
import os
import subprocess
import sys

import hf_fixtures as hx
import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn
from safetensors.numpy import load_file, save_file

from codellm_jax import axes
from codellm_jax.interop import convert, hf_llama, hf_t5, hf_torch, pretrained, safetensors_io
from codellm_jax.models import decoder, encoder_decoder

ATOL = 1e-4  # whole models, float32
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tokens(shape, seed=0, low=0, high=256):
    return np.random.RandomState(seed).randint(low, high, shape).astype(np.int32)


def _llama_logits(params, cfg, tokens):
    return np.asarray(decoder.forward(params, cfg, tokens))


def _t5_inputs(seed=0):
    enc = _tokens((2, 24), seed, low=2)
    dec = _tokens((2, 17), seed + 1, low=2)
    mask = np.ones(enc.shape, np.int32)
    mask[1, 15:] = 0  # row 1 is right-padded
    enc[1, 15:] = 0
    return enc, dec, mask


def _t5_logits(params, cfg, enc, dec, mask):
    return np.asarray(encoder_decoder.forward(params, cfg, enc, dec, mask.astype(bool)))


def _flat(params):
    return {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(params)
    }


def _assert_same_params(a, b):
    fa, fb = _flat(a), _flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert fa[k].dtype == fb[k].dtype, k
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _random_params(shapes, seed=0):
    """Our param tree with every leaf redrawn (norm scales near 1), for export tests."""
    rs = np.random.RandomState(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if name.endswith("['scale']"):
            x = 1.0 + 0.1 * rs.randn(*s.shape)
        else:  # T5's unit-scale shared embedding keeps its rescaled tied logits O(1)
            x = (1.0 if name.startswith("['shared']") else 0.1) * rs.randn(*s.shape)
        return x.astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


# ---------------------------------------------------------------- Llama parity


@pytest.mark.parametrize(
    'overrides',
    [
        dict(num_key_value_heads=2),  # GQA
        dict(num_key_value_heads=1),  # MQA
        dict(num_key_value_heads=4, tie_word_embeddings=True),  # MHA, tied
        dict(rope_scaling=hx.LLAMA3_ROPE_SCALING, rope_theta=50000.0),  # Llama 3.1
    ],
    ids=['gqa', 'mqa', 'mha_tied', 'llama31_rope'],
)
def test_llama_logits_match_transformers(tmp_path, overrides):
    hf_model, hf_dir = hx.tiny_llama(tmp_path, **overrides)
    kind, cfg, params = convert.load_hf(hf_dir)
    assert kind == 'decoder'
    assert cfg.num_kv_heads == hf_model.config.num_key_value_heads
    assert cfg.tie_embeddings == bool(overrides.get('tie_word_embeddings', False))
    assert ('lm_head' in params) != cfg.tie_embeddings
    tokens = _tokens((2, 48))  # longer than original_max_position_embeddings=32
    want = hx.hf_logits_llama(hf_model, tokens)
    assert want.std() > 0.3  # a meaningful oracle
    np.testing.assert_allclose(_llama_logits(params, cfg, tokens), want, rtol=0, atol=ATOL)
    if overrides.get('num_key_value_heads') == 2:  # one layout for scanned and unrolled layers
        unrolled = dataclasses.replace(cfg, scan_layers=False)
        np.testing.assert_allclose(_llama_logits(params, unrolled, tokens), want, atol=ATOL)
    if 'rope_scaling' in overrides:
        assert cfg.rope_theta == 50000.0
        assert cfg.rope_scaling.original_max_position_embeddings == 32
        unscaled = dataclasses.replace(cfg, rope_scaling=None)
        assert np.abs(_llama_logits(params, unscaled, tokens) - want).max() > 100 * ATOL


def test_llama_tied_flag_with_distinct_head_imports_untied(tmp_path):
    # transformers 5 keeps an lm_head.weight that differs from the embedding even when
    # tie_word_embeddings=True; so do we.
    hf_model, hf_dir = hx.tiny_llama(tmp_path)
    with open(os.path.join(hf_dir, 'config.json')) as f:
        hf_config = {**json.load(f), 'tie_word_embeddings': True}
    cfg, params = hf_llama.from_hf(hf_config, safetensors_io.read_tensors(hf_dir))
    assert not cfg.tie_embeddings
    tokens = _tokens((1, 8))
    np.testing.assert_allclose(
        _llama_logits(params, cfg, tokens), hx.hf_logits_llama(hf_model, tokens), atol=ATOL
    )


# ---------------------------------------------------------------- T5 parity


@pytest.mark.parametrize(
    'feed_forward,kwargs,want_tied',
    [
        ('relu', {}, True),
        ('gated-gelu', {}, True),
        ('relu', dict(tie_word_embeddings=False), False),
        ('gated-gelu', dict(tie_word_embeddings=False, untied_lm_head=True), False),
    ],
    ids=['relu_tied', 'gated_tied', 'relu_noscale_shared_head', 'gated_untied'],
)
def test_t5_logits_match_transformers(tmp_path, feed_forward, kwargs, want_tied):
    hf_model, hf_dir = hx.tiny_t5(tmp_path, feed_forward=feed_forward, **kwargs)
    kind, cfg, params = convert.load_hf(hf_dir)
    assert kind == 'encoder_decoder' and cfg.feed_forward == feed_forward
    assert cfg.tie_embeddings == want_tied and ('lm_head' in params) != want_tied
    head_is_shared = hf_model.lm_head.weight.data_ptr() == hf_model.shared.weight.data_ptr()
    # What transformers 5 actually does: tie_word_embeddings=False alone only drops the
    # d_model**-0.5 rescale; the head stays the shared embedding.
    assert head_is_shared == (not kwargs.get('untied_lm_head', False))
    assert hf_model.config.scale_decoder_outputs == want_tied
    if head_is_shared and not want_tied:
        np.testing.assert_array_equal(params['lm_head']['kernel'], params['shared']['embedding'].T)
    enc, dec, mask = _t5_inputs()
    want = hx.hf_logits_t5(hf_model, enc, dec, mask)
    assert want.std() > 0.3
    got = _t5_logits(params, cfg, enc, dec, mask)
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    if kwargs.get('untied_lm_head'):  # one layout for scanned and unrolled layers
        unrolled = dataclasses.replace(cfg, scan_layers=False)
        np.testing.assert_allclose(_t5_logits(params, unrolled, enc, dec, mask), want, atol=ATOL)


def test_t5_scaled_distinct_head_folds_rescale(tmp_path):
    # tie_word_embeddings=True (rescale on) but a distinct lm_head.weight in the file.
    hf_model, hf_dir = hx.tiny_t5(
        tmp_path, untied_lm_head=True, tie_word_embeddings=False, feed_forward='gated-gelu'
    )
    with open(os.path.join(hf_dir, 'config.json')) as f:
        hf_config = json.load(f)
    hf_config['scale_decoder_outputs'] = True
    hf_model.config.scale_decoder_outputs = True
    cfg, params = hf_t5.from_hf(hf_config, safetensors_io.read_tensors(hf_dir))
    assert not cfg.tie_embeddings
    enc, dec, mask = _t5_inputs(1)
    np.testing.assert_allclose(
        _t5_logits(params, cfg, enc, dec, mask),
        hx.hf_logits_t5(hf_model, enc, dec, mask),
        rtol=0,
        atol=ATOL,
    )


@pytest.mark.parametrize('feed_forward', ['relu', 'gated-gelu'])
@pytest.mark.parametrize('tie', [True, False])
def test_tensor_maps_match_model_param_shapes(feed_forward, tie):
    t5_cfg = hf_t5.config_from_hf({**hx.T5_DEFAULTS, 'feed_forward_proj': feed_forward})
    t5_cfg = dataclasses.replace(t5_cfg, tie_embeddings=tie, num_decoder_layers=3)
    llama_cfg = hf_llama.config_from_hf({**hx.LLAMA_DEFAULTS, 'tie_word_embeddings': tie})
    for cfg, model, module in (
        (t5_cfg, encoder_decoder, hf_t5),
        (llama_cfg, decoder, hf_llama),
    ):
        leaves = jax.tree_util.tree_leaves_with_path(model.param_shapes(cfg))
        want = {jax.tree_util.keystr(p): tuple(s.shape) for p, s in leaves}
        got = {}
        for m in module.tensor_maps(cfg):
            got[''.join(f"['{p}']" for p in m.path)] = m.our_shape
        assert got == want


# ---------------------------------------------------------------- sharded safetensors


def test_sharded_checkpoint_with_index_imports(tmp_path):
    hf_model, hf_dir = hx.tiny_llama(tmp_path / 'a', max_shard_size='40KB')
    files = os.listdir(hf_dir)
    assert safetensors_io.INDEX_FILE in files
    assert len([f for f in files if f.endswith('.safetensors')]) > 2
    _, single_dir = hx.tiny_llama(tmp_path / 'b')
    _, cfg, params = convert.load_hf(hf_dir)
    _, cfg1, params1 = convert.load_hf(single_dir)
    assert cfg == cfg1
    _assert_same_params(params, params1)
    tokens = _tokens((1, 12))
    np.testing.assert_allclose(
        _llama_logits(params, cfg, tokens), hx.hf_logits_llama(hf_model, tokens), atol=ATOL
    )


def test_write_tensors_shards_and_reads_back(tmp_path):
    rs = np.random.RandomState(0)
    tensors = {f't{i}': rs.randn(10, 100).astype(np.float32) for i in range(5)}  # 4 KB each
    tensors['bf'] = rs.randn(3, 7).astype(ml_dtypes.bfloat16)
    written = safetensors_io.write_tensors(tmp_path, tensors, max_shard_bytes='9KB')
    assert written[-1] == safetensors_io.INDEX_FILE and len(written) == 4
    index = json.loads((tmp_path / safetensors_io.INDEX_FILE).read_text())
    assert index['metadata']['total_size'] == sum(t.nbytes for t in tensors.values())
    back = safetensors_io.read_tensors(str(tmp_path))
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype
        np.testing.assert_array_equal(back[k], v)
    assert safetensors_io.read_shapes(str(tmp_path))['bf'] == (3, 7)


# ---------------------------------------------------------------- export


def _export_twice(tmp_path, kind, cfg, params):
    out1, out2 = str(tmp_path / 'export1'), str(tmp_path / 'export2')
    convert.save_hf(out1, kind, cfg, params, max_shard_bytes='60KB')
    kind2, cfg2, params2 = convert.load_hf(out1)
    assert (kind2, cfg2) == (kind, cfg)
    _assert_same_params(params2, params)
    convert.save_hf(out2, kind2, cfg2, params2, max_shard_bytes='60KB')
    names = sorted(os.listdir(out1))
    assert names == sorted(os.listdir(out2)) and safetensors_io.INDEX_FILE in names
    for name in names:
        with open(os.path.join(out1, name), 'rb') as f1, open(os.path.join(out2, name), 'rb') as f2:
            assert f1.read() == f2.read(), name
    return out1


@pytest.mark.parametrize(
    'builder',
    [
        lambda p: hx.tiny_llama(p, rope_scaling=hx.LLAMA3_ROPE_SCALING),
        lambda p: hx.tiny_llama(p, tie_word_embeddings=True, num_key_value_heads=1),
        lambda p: hx.tiny_t5(p),
        lambda p: hx.tiny_t5(p, 'gated-gelu', untied_lm_head=True, tie_word_embeddings=False),
    ],
    ids=['llama31', 'llama_tied_mqa', 't5_relu_tied', 't5_gated_untied'],
)
def test_import_export_import_identical_and_hf_loads_it(tmp_path, builder):
    hf_model, hf_dir = builder(tmp_path)
    kind, cfg, params = convert.load_hf(hf_dir)
    out = _export_twice(tmp_path, kind, cfg, params)
    cls = type(hf_model)
    reloaded = cls.from_pretrained(out, attn_implementation='eager', dtype=torch.float32).eval()
    if kind == 'decoder':
        tokens = _tokens((2, 40), 3)
        want = hx.hf_logits_llama(hf_model, tokens)
        got_hf = hx.hf_logits_llama(reloaded, tokens)
    else:
        enc, dec, mask = _t5_inputs(3)
        want = hx.hf_logits_t5(hf_model, enc, dec, mask)
        got_hf = hx.hf_logits_t5(reloaded, enc, dec, mask)
    np.testing.assert_allclose(got_hf, want, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    'kind,cfg',
    [
        (
            'decoder',
            hf_llama.config_from_hf(
                {
                    **hx.LLAMA_DEFAULTS,
                    'num_key_value_heads': 1,
                    'rope_scaling': hx.LLAMA3_ROPE_SCALING,
                }
            ),
        ),
        ('encoder_decoder', hf_t5.config_from_hf({**hx.T5_DEFAULTS, 'feed_forward_proj': 'relu'})),
        (
            'encoder_decoder',
            hf_t5.config_from_hf(
                {**hx.T5_DEFAULTS, 'feed_forward_proj': 'gated-gelu', 'tie_word_embeddings': False}
            ),
        ),
    ],
    ids=['llama_mqa_rope31', 't5_relu_tied', 't5_gated_untied'],
)
def test_transformers_loads_our_native_params(tmp_path, kind, cfg):
    model = decoder if kind == 'decoder' else encoder_decoder
    params = _random_params(model.param_shapes(cfg))
    convert.save_hf(str(tmp_path), kind, cfg, params)
    if kind == 'decoder':
        hf = transformers.LlamaForCausalLM.from_pretrained(
            tmp_path, attn_implementation='eager', dtype=torch.float32
        ).eval()
        tokens = _tokens((2, 40), 5)
        want, got = _llama_logits(params, cfg, tokens), hx.hf_logits_llama(hf, tokens)
    else:
        hf = transformers.T5ForConditionalGeneration.from_pretrained(
            tmp_path, attn_implementation='eager', dtype=torch.float32
        ).eval()
        enc, dec, mask = _t5_inputs(5)
        want, got = _t5_logits(params, cfg, enc, dec, mask), hx.hf_logits_t5(hf, enc, dec, mask)
    assert want.std() > 0.3
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)


def test_in_memory_torch_model_matches_our_logits():
    """`hf_torch.llama_for_causal_lm` (the benchmarks' peer) computes our model's logits."""
    cfg = hf_llama.config_from_hf({**hx.LLAMA_DEFAULTS, 'num_key_value_heads': 2})
    params = _random_params(decoder.param_shapes(cfg))
    model = hf_torch.llama_for_causal_lm(cfg, params, attn_implementation='eager')
    assert not model.training
    tokens = _tokens((2, 40), 7)
    want = _llama_logits(params, cfg, tokens)
    assert want.std() > 0.3
    np.testing.assert_allclose(hx.hf_logits_llama(model, tokens), want, rtol=0, atol=ATOL)
    broken = {k: v for k, v in params.items() if k != 'final_norm'}
    with pytest.raises(ValueError, match='missing .final_norm/scale'):
        hf_torch.llama_for_causal_lm(cfg, broken)


def test_bfloat16_checkpoint_round_trip(tmp_path):
    hf_model, _ = hx.tiny_llama(tmp_path)
    bf_dir = str(tmp_path / 'bf16')
    hf_model.to(torch.bfloat16).save_pretrained(bf_dir)
    _, cfg, params = convert.load_hf(bf_dir)
    assert cfg.param_dtype == 'bfloat16'
    assert params['embed']['embedding'].dtype == ml_dtypes.bfloat16
    want = hf_model.model.embed_tokens.weight.float().detach().numpy()
    np.testing.assert_array_equal(params['embed']['embedding'].astype(np.float32), want)
    _, cfg32, params32 = convert.load_hf(bf_dir, param_dtype='float32')
    assert cfg32.param_dtype == 'float32' and params32['embed']['embedding'].dtype == np.float32
    out = str(tmp_path / 'out')
    convert.save_hf(out, 'decoder', cfg, params)
    hf_config = json.loads(open(os.path.join(out, 'config.json')).read())
    assert hf_config['torch_dtype'] == 'bfloat16'
    assert load_file(os.path.join(out, 'model.safetensors'))['lm_head.weight'].dtype == (
        ml_dtypes.bfloat16
    )


# ---------------------------------------------------------------- our pretrained format


def test_pretrained_save_load_and_sharded_restore(tmp_path):
    _, hf_dir = hx.tiny_t5(tmp_path, 'gated-gelu')
    (tmp_path / 't5' / 'tokenizer_config.json').write_text('{"model_max_length": 512}')
    (tmp_path / 't5' / 'spiece.model').write_bytes(b'\x00fake')
    out = str(tmp_path / 'ours')
    line = convert.hf_to_pretrained(hf_dir, out)
    assert line.startswith('T5ForConditionalGeneration (encoder_decoder): ')
    kind, cfg = pretrained.load_model_config(out)
    _, cfg_hf, params_hf = convert.load_hf(hf_dir)
    assert (kind, cfg) == ('encoder_decoder', cfg_hf)
    assert sorted(os.listdir(os.path.join(out, 'tokenizer'))) == [
        'generation_config.json',  # written by save_pretrained
        'spiece.model',
        'tokenizer_config.json',
    ]
    _assert_same_params(jax.device_get(pretrained.load_params(out)), params_hf)

    mesh = jax.make_mesh((1, 4, 2), axes.MESH_AXES)

    def abstract_for(model_cfg):
        shardings = nn.logical_to_mesh_sharding(
            encoder_decoder.param_logical_axes(model_cfg), mesh, axes.DEFAULT_RULES
        )
        return jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            encoder_decoder.param_shapes(model_cfg),
            shardings,
        )

    abstract = abstract_for(cfg)
    restored = pretrained.load_params(out, abstract)
    leaf = restored['decoder']['layers']['mlp']['wi_0']['kernel']
    assert leaf.sharding == abstract['decoder']['layers']['mlp']['wi_0']['kernel'].sharding
    assert leaf.sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', 'tensor')
    _assert_same_params(jax.device_get(restored), params_hf)

    abstract_wrong = abstract_for(dataclasses.replace(cfg, d_ff=96))
    with pytest.raises(
        ValueError, match=r"\['decoder'\]\['layers'\]\['mlp'\]\['wi_0'\]\['kernel'\]"
    ):
        pretrained.load_params(out, abstract_wrong)


def test_convert_command_both_directions(tmp_path):
    hf_model, hf_dir = hx.tiny_llama(
        tmp_path, num_key_value_heads=1, bos_token_id=7, eos_token_id=[8, 9]
    )
    ours, back = str(tmp_path / 'ours'), str(tmp_path / 'back')
    env = {**os.environ, 'PYTHONPATH': REPO, 'JAX_PLATFORMS': 'cpu'}
    cmd = [sys.executable, '-m', 'codellm_jax.interop.convert']
    r = subprocess.run(
        [*cmd, f'--hf_dir={hf_dir}', f'--out_dir={ours}'], env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith('LlamaForCausalLM (decoder): ')
    r = subprocess.run(
        [*cmd, '--direction=to_hf', f'--in_dir={ours}', f'--out_dir={back}'],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert 'LlamaForCausalLM (decoder)' in r.stdout
    back_config = json.loads(open(os.path.join(back, 'config.json')).read())
    assert back_config['bos_token_id'] == 7 and back_config['eos_token_id'] == [8, 9]
    hf2 = transformers.LlamaForCausalLM.from_pretrained(back, attn_implementation='eager').eval()
    tokens = _tokens((1, 10))
    np.testing.assert_allclose(
        hx.hf_logits_llama(hf2, tokens), hx.hf_logits_llama(hf_model, tokens), atol=ATOL
    )


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope='module')
def llama_dir(tmp_path_factory):
    return hx.tiny_llama(tmp_path_factory.mktemp('bad'))[1]


def _llama_inputs(llama_dir):
    with open(os.path.join(llama_dir, 'config.json')) as f:
        return json.load(f), dict(safetensors_io.read_tensors(llama_dir))


def test_unknown_architecture_is_named(tmp_path):
    (tmp_path / 'config.json').write_text(
        json.dumps({'architectures': ['MistralForCausalLM'], 'model_type': 'mistral'})
    )
    with pytest.raises(ValueError, match=r'MistralForCausalLM.*LlamaForCausalLM.*T5ForConditional'):
        convert.load_hf(str(tmp_path))


def test_missing_config_and_weights_are_clear(tmp_path, llama_dir):
    with pytest.raises(FileNotFoundError, match='config.json'):
        convert.load_hf(str(tmp_path))
    (tmp_path / 'config.json').write_text(open(os.path.join(llama_dir, 'config.json')).read())
    (tmp_path / 'pytorch_model.bin').write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r'No \*\.safetensors.*pytorch_model\.bin'):
        convert.load_hf(str(tmp_path))


def test_missing_tensor_is_named(llama_dir):
    hf_config, tensors = _llama_inputs(llama_dir)
    del tensors['model.layers.1.mlp.up_proj.weight']
    with pytest.raises(ValueError, match=r'missing tensor\(s\) \[model\.layers\.1\.mlp\.up_proj'):
        hf_llama.from_hf(hf_config, tensors)


def test_extra_tensor_is_named(llama_dir):
    hf_config, tensors = _llama_inputs(llama_dir)
    tensors['model.layers.0.self_attn.q_proj.bias'] = np.zeros(64, np.float32)
    tensors['model.layers.0.self_attn.rotary_emb.inv_freq'] = np.zeros(8, np.float32)  # ignored
    with pytest.raises(
        ValueError, match=r'unexpected tensor\(s\) \[model\.layers\.0\.self_attn\.q_proj\.bias\]'
    ):
        hf_llama.from_hf(hf_config, tensors)


def test_shape_inconsistent_with_config_is_named(llama_dir):
    hf_config, tensors = _llama_inputs(llama_dir)
    hf_config['intermediate_size'] = 96
    with pytest.raises(
        ValueError,
        match=r'model\.layers\.0\.mlp\.down_proj\.weight: expected \(64, 96\), got \(64, 128\)',
    ):
        hf_llama.from_hf(hf_config, tensors)


def test_sharded_index_pointing_to_missing_shard(tmp_path):
    _, hf_dir = hx.tiny_llama(tmp_path, max_shard_size='40KB')
    victim = sorted(f for f in os.listdir(hf_dir) if f.endswith('.safetensors'))[-1]
    os.remove(os.path.join(hf_dir, victim))
    with pytest.raises(FileNotFoundError, match=victim):
        convert.load_hf(hf_dir)


def test_heads_not_divisible_by_kv_heads(llama_dir):
    hf_config, tensors = _llama_inputs(llama_dir)
    hf_config['num_key_value_heads'] = 3
    with pytest.raises(
        ValueError, match='num_attention_heads=4 is not divisible by num_key_value_heads=3'
    ):
        hf_llama.from_hf(hf_config, tensors)


@pytest.mark.parametrize(
    'module,change,pattern',
    [
        (hf_llama, {'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, "rope_type='yarn'"),
        (hf_llama, {'hidden_act': 'gelu'}, "hidden_act='gelu'"),
        (hf_llama, {'attention_bias': True}, 'attention_bias'),
        (hf_t5, {'feed_forward_proj': 'gated-silu'}, "feed_forward_proj='gated-silu'"),
    ],
)
def test_unsupported_config_fields(module, change, pattern):
    base = hx.LLAMA_DEFAULTS if module is hf_llama else hx.T5_DEFAULTS
    with pytest.raises(ValueError, match=pattern):
        module.config_from_hf({**base, **change})


def test_t5_separate_encoder_embedding_rejected(tmp_path):
    _, hf_dir = hx.tiny_t5(tmp_path)
    hf_config = json.loads(open(os.path.join(hf_dir, 'config.json')).read())
    tensors = dict(safetensors_io.read_tensors(hf_dir))
    # Equal embedding copies and t5-small's unused cross-attention bias import (as in HF).
    tensors['encoder.embed_tokens.weight'] = tensors['shared.weight'].copy()
    tensors['decoder.embed_tokens.weight'] = tensors['shared.weight'].copy()
    tensors['decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight'] = np.zeros(
        (32, 4), np.float32
    )
    _, params = hf_t5.from_hf(hf_config, tensors)
    _assert_same_params(params, convert.load_hf(hf_dir)[2])
    tensors['encoder.embed_tokens.weight'] = tensors['shared.weight'] + 1
    with pytest.raises(ValueError, match='encoder.embed_tokens.weight differs from shared'):
        hf_t5.from_hf(hf_config, tensors)


def test_export_rejects_params_that_do_not_match_config(tmp_path, llama_dir):
    _, cfg, params = convert.load_hf(llama_dir)
    bad = jax.tree.map(lambda x: x, params)
    del bad['layers']['mlp']['up']
    bad['final_norm']['scale'] = np.ones(63, np.float32)
    with pytest.raises(
        ValueError, match=r'layers/mlp/up/kernel.*final_norm/scale: expected \(64,\), got \(63,\)'
    ):
        convert.save_hf(str(tmp_path), 'decoder', cfg, bad)


def test_not_a_pretrained_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match='interop.convert'):
        pretrained.load_model_config(str(tmp_path))


def test_file_without_index_duplicate_tensor(tmp_path):
    save_file({'a': np.zeros(2, np.float32)}, str(tmp_path / 'x.safetensors'))
    save_file({'a': np.ones(2, np.float32)}, str(tmp_path / 'y.safetensors'))
    with pytest.raises(ValueError, match="Tensor 'a' is in both"):
        safetensors_io.read_tensors(str(tmp_path))
