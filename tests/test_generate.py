"""Oracles for `codellm_jax.generate` with our real models (tiny, random weights).

KV-cache decoding must equal the argmax of the full forward pass at every step; shapes are
bucketed so many prompt lengths share few compiled programs; bad input is refused clearly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models

from codellm_jax import generate
from codellm_jax.generate import generator as generator_lib
from codellm_jax.models import decoder, encoder_decoder

DEC_CFG = tiny_models.decoder_config(max_seq_len=96, rope_theta=10000.0)
ENCDEC_CFG = tiny_models.encoder_decoder_config(
    max_seq_len=64, relative_attention_num_buckets=8, relative_attention_max_distance=16
)


def _scaled(params, scale=4.0):
    """Larger weights than the default init: sharper, distinct logits (no argmax near-ties)."""
    return jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, params)


@pytest.fixture(scope='module')
def dec_params():
    return _scaled(jax.jit(decoder.init_params, static_argnums=0)(DEC_CFG, jax.random.key(0)))


@pytest.fixture(scope='module')
def encdec_params():
    init = jax.jit(encoder_decoder.init_params, static_argnums=0)
    return _scaled(init(ENCDEC_CFG, jax.random.key(1)), 2.0)


class CharTokenizer:
    """id = index in ALPHABET; 0 pad, 1 eos, 2 bos."""

    ALPHABET = '\0\1\2' + 'abcdefghijklmnopqrstuvwxyz0123456789 \n():=+-*/,.[]{}<>_!?#@$%&'
    vocab_size = 64
    pad_id, eos_id, bos_id = 0, 1, 2

    def encode(self, text):
        return [self.ALPHABET.index(c) for c in text]

    def decode(self, ids):
        return ''.join(self.ALPHABET[i] for i in ids if i > 2)


@jax.jit
def _dec_forward(params, tokens_1xW):
    return decoder.forward(params, DEC_CFG, tokens_1xW)


@jax.jit
def _encdec_forward(params, inputs_1xS, targets_1xW):
    return encoder_decoder.forward(params, ENCDEC_CFG, inputs_1xS, targets_1xW)


def _full_forward_greedy(params, prompt, n_new, eos=None):
    """The oracle: re-run the full causal forward on the whole sequence for every token.

    Sequences are right-padded to a fixed width (causality makes the padding invisible) so
    one compiled program serves every step.
    """
    seq = list(prompt)
    for _ in range(n_new):
        tokens = np.zeros((1, DEC_CFG.max_seq_len), np.int32)
        tokens[0, : len(seq)] = seq
        logits = _dec_forward(params, jnp.asarray(tokens))
        seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        if seq[-1] == eos:
            break
    return seq[len(prompt) :]


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, 64, size=n)) for n in lengths]


# cache_block 64: one generation block (one loop phase); 3: three blocks (three phases, each
# attending to the blocks filled so far). Batches of 3 rows decode with q/k/v fused, of 8
# rows with separate q/k/v kernels (`Generator._params_for`).
@pytest.mark.parametrize('cache_block, batch_size', [(64, 3), (3, 3), (3, 8)])
def test_decoder_cache_decoding_equals_full_forward_argmax(dec_params, cache_block, batch_size):
    prompts = _prompts([5, 1, 12, 7, 3, 9, 2, 6])
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, None)
    gen_cfg = generate.GenerateConfig(
        max_new_tokens=10, batch_size=batch_size, cache_block=cache_block
    )
    fused = 'qkv' in gen._params_for(batch_size)['layers_0']['attn']
    assert fused == (batch_size < 8)
    out = gen.generate(prompts, gen_cfg)
    for p, samples in zip(prompts, out, strict=True):
        assert len(samples) == 1
        assert samples[0].tokens == _full_forward_greedy(dec_params, p, 10)
        logits = _dec_forward(dec_params, jnp.asarray([p + samples[0].tokens]))
        logp = jax.nn.log_softmax(logits[0, len(p) - 1 : -1])
        want = float(jnp.take_along_axis(logp, jnp.asarray(samples[0].tokens)[:, None], 1).sum())
        np.testing.assert_allclose(samples[0].score, want, rtol=1e-4)


@pytest.mark.parametrize('cache_block', [64, 3])
def test_encoder_decoder_cache_decoding_equals_full_forward_argmax(encdec_params, cache_block):
    inputs = _prompts([6, 2, 9], seed=1)
    gen = generate.make_generator('encoder_decoder', ENCDEC_CFG, encdec_params, None)
    gen_cfg = generate.GenerateConfig(max_new_tokens=8, batch_size=2, cache_block=cache_block)
    out = gen.generate(inputs, gen_cfg)
    for x, samples in zip(inputs, out, strict=True):
        seq = [ENCDEC_CFG.decoder_start_token_id]
        for _ in range(8):
            targets = np.zeros((1, 16), np.int32)
            targets[0, : len(seq)] = seq
            logits = _encdec_forward(encdec_params, jnp.asarray([x]), jnp.asarray(targets))
            seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
        assert samples[0].tokens == seq[1:]


def test_eos_ends_a_row_and_is_kept(dec_params):
    prompts = _prompts([4, 9], seed=2)
    free = [_full_forward_greedy(dec_params, p, 8) for p in prompts]
    eos = free[0][3]  # make the 4th token of prompt 0 the eos
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, None)
    out = gen.generate(prompts, generate.GenerateConfig(max_new_tokens=8, eos_ids=(eos,)))
    for f, samples in zip(free, out, strict=True):
        cut = f.index(eos) + 1 if eos in f else len(f)
        assert samples[0].tokens == f[:cut]


def test_few_programs_for_many_prompt_lengths(dec_params):
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, None)
    cfg = generate.GenerateConfig(max_new_tokens=4, batch_size=2)
    before = generator_lib._generate_batch._cache_size()
    for n in (3, 7, 11, 16, 20):  # buckets 16 and 32
        gen.generate(_prompts([n, max(n - 2, 1)], seed=n), cfg)
    assert generator_lib._generate_batch._cache_size() - before <= 2


def test_sampling_is_independent_of_batching_and_top_k_1_is_greedy(dec_params):
    prompts = _prompts([5, 3, 8], seed=3)
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, None)
    cfg = generate.GenerateConfig(
        strategy='sample', max_new_tokens=6, num_samples=3, seed=4, temperature=1.5, top_p=0.9
    )
    a = gen.generate(prompts, cfg)
    b = gen.generate(prompts, generate.GenerateConfig(**{**cfg.__dict__, 'batch_size': 1}))
    assert [[s.tokens for s in x] for x in a] == [[s.tokens for s in x] for x in b]
    assert len({tuple(s.tokens) for s in a[2]}) > 1  # samples of a prompt differ
    top1 = gen.generate(prompts, generate.GenerateConfig(**{**cfg.__dict__, 'top_k': 1}))
    greedy = gen.generate(prompts, generate.GenerateConfig(max_new_tokens=6))
    for t, g in zip(top1, greedy, strict=True):
        assert all(s.tokens == g[0].tokens for s in t)


def test_beam_one_equals_greedy_and_returns_sorted_hypotheses(dec_params):
    prompts = _prompts([5, 8], seed=5)
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, None)
    greedy = gen.generate(prompts, generate.GenerateConfig(max_new_tokens=6))
    beam1 = gen.generate(
        prompts, generate.GenerateConfig(strategy='beam', num_beams=1, max_new_tokens=6)
    )
    assert [x[0].tokens for x in beam1] == [x[0].tokens for x in greedy]
    beam = gen.generate(
        prompts,
        generate.GenerateConfig(
            strategy='beam', num_beams=4, num_return_sequences=3, max_new_tokens=6
        ),
    )
    for hyps in beam:
        scores = [h.score for h in hyps]
        assert len(hyps) == 3 and scores == sorted(scores, reverse=True)
    # The same search over a cache in 2-slot blocks (3 loop phases, the prompt's block
    # never reordered) and in one block (everything reordered every step).
    for cache_block in (2, 0):
        other = gen.generate(
            prompts,
            generate.GenerateConfig(
                strategy='beam',
                num_beams=4,
                num_return_sequences=3,
                max_new_tokens=6,
                cache_block=cache_block,
            ),
        )
        for hyps, want in zip(other, beam, strict=True):
            assert [h.tokens for h in hyps] == [h.tokens for h in want]
            np.testing.assert_allclose([h.score for h in hyps], [h.score for h in want], rtol=1e-5)


def test_text_prompts_and_stop_strings(dec_params):
    tok = CharTokenizer()
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, tok)
    free = gen.generate(['def f(x):'], generate.GenerateConfig(max_new_tokens=12, eos_ids=()))
    text = free[0][0].text
    assert len(text) >= 6
    stop = text[3:5]
    first = text.find(stop)
    out = gen.generate(
        ['def f(x):'],
        generate.GenerateConfig(max_new_tokens=12, eos_ids=(), stop_sequences=(stop, '%%%')),
    )
    assert out[0][0].text == text[:first]
    assert out[0][0].tokens == free[0][0].tokens[: first + len(stop)]


def test_bad_input_is_refused(dec_params):
    gen = generate.make_generator('decoder', DEC_CFG, dec_params, None)
    long_prompt = _prompts([90])[0]
    with pytest.raises(ValueError, match='truncate_prompt'):
        gen.generate([long_prompt], generate.GenerateConfig(max_new_tokens=10))
    left = gen.generate(
        [long_prompt], generate.GenerateConfig(max_new_tokens=10, truncate_prompt='left')
    )
    assert left[0][0].tokens == _full_forward_greedy(dec_params, long_prompt[-86:], 10)
    with pytest.raises(ValueError, match='top_p'):
        generate.GenerateConfig(strategy='sample', top_p=1.5)
    with pytest.raises(ValueError, match='temperature'):
        generate.GenerateConfig(strategy='sample', temperature=-0.5)
    with pytest.raises(ValueError, match='cache_block'):
        generate.GenerateConfig(cache_block=-1)
    with pytest.raises(ValueError, match='top_k'):
        gen.generate([[3]], generate.GenerateConfig(strategy='sample', top_k=65))
    with pytest.raises(ValueError, match='GiB'):
        gen.generate(
            [[3]],
            generate.GenerateConfig(
                strategy='beam', num_beams=8, batch_size=64, max_new_tokens=10, max_memory_gb=1e-4
            ),
        )
    with pytest.raises(ValueError, match='outside'):
        gen.generate([[3, 64]], generate.GenerateConfig())


def test_command_on_pretrained_dir(dec_params, tmp_path):
    from codellm_jax.interop import pretrained

    ckpt = str(tmp_path / 'ckpt')
    pretrained.save_pretrained(ckpt, 'decoder', DEC_CFG, dec_params)
    prompts = _prompts([4, 6], seed=7)
    with open(tmp_path / 'in.jsonl', 'w') as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({'id': i, 'tokens': [int(t) for t in p]}) + '\n')
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': ''}
    subprocess.run(
        [
            sys.executable,
            '-m',
            'codellm_jax.generate',
            f'--checkpoint={ckpt}',
            f'--prompts={tmp_path / "in.jsonl"}',
            f'--output={tmp_path / "out.jsonl"}',
            '--max_new_tokens=5',
            '--eos_ids=63',
        ],
        check=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    rows = [json.loads(line) for line in open(tmp_path / 'out.jsonl')]
    assert [r['id'] for r in rows] == [0, 1]
    for r, p in zip(rows, prompts, strict=True):
        assert r['samples'][0]['tokens'] == _full_forward_greedy(dec_params, p, 5, eos=63)


def test_run_generate_from_config(dec_params, tmp_path):
    from codellm_jax import config as config_lib
    from codellm_jax.interop import pretrained

    ckpt = str(tmp_path / 'ckpt')
    pretrained.save_pretrained(ckpt, 'decoder', DEC_CFG, dec_params)
    prompts = _prompts([4, 6], seed=8)
    with open(tmp_path / 'in.jsonl', 'w') as f:
        for p in prompts:
            f.write(json.dumps({'tokens': [int(t) for t in p]}) + '\n')
    config = config_lib.base_config()
    config.generate.checkpoint = ckpt
    config.generate.prompts = str(tmp_path / 'in.jsonl')
    config.generate.max_new_tokens = 5
    config.generate.eos_ids = (63,)
    out = generate.run_generate(config, str(tmp_path / 'workdir'))
    assert out == str(tmp_path / 'workdir' / 'generate' / 'samples.jsonl')
    rows = [json.loads(line) for line in open(out)]
    for r, p in zip(rows, prompts, strict=True):
        assert r['samples'][0]['tokens'] == _full_forward_greedy(dec_params, p, 5, eos=63)
