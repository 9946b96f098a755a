"""Parity with Hugging Face `generate()` on tiny random Llama and T5 models.

The same weights (converted by `codellm_jax.interop`) run in transformers/PyTorch and in our
`Generator`: greedy must agree token for token, beam search (4 beams, HF length penalty)
must return the same hypotheses with `sequences_scores` within 1e-4, and eos must end a
sequence at the same place. HF runs each prompt alone (batch 1, no padding); ours runs them
batched with ragged, right-padded prompts.
"""

from __future__ import annotations

import hf_fixtures
import numpy as np
import pytest
import torch

from codellm_jax import generate
from codellm_jax.interop import convert

N_NEW = 12


def _cut_at_eos(tokens, eos):
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


@pytest.fixture(scope='module')
def llama(tmp_path_factory):
    model, hf_dir = hf_fixtures.tiny_llama(tmp_path_factory.mktemp('llama'))
    kind, cfg, params = convert.load_hf(hf_dir)
    return model, generate.make_generator(kind, cfg, params, None)


@pytest.fixture(scope='module')
def t5(tmp_path_factory):
    # Tied tiny T5s predict their input token (the decoder start, 0) forever; an untied,
    # larger LM head gives varied, well-separated logits.
    model, hf_dir = hf_fixtures.tiny_t5(tmp_path_factory.mktemp('t5'), untied_lm_head=True)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    model.save_pretrained(hf_dir)
    kind, cfg, params = convert.load_hf(hf_dir)
    return model, generate.make_generator(kind, cfg, params, None)


def _prompts(lengths, seed):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(2, 256, size=n)] for n in lengths]


def _hf_generate(model, prompt, is_t5, **kw):
    ids = torch.as_tensor([prompt], dtype=torch.long)
    kw = dict(max_new_tokens=N_NEW, do_sample=False, pad_token_id=0, **kw)
    if is_t5:
        kw['decoder_start_token_id'] = 0
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    return out


def _eos_from_free_run(model, prompt, is_t5):
    """(eos, k): a token the model really generates first at step k >= 2, used as eos."""
    seq = _hf_generate(model, prompt, is_t5, eos_token_id=None)
    new = [int(t) for t in (seq[0, 1:] if is_t5 else seq[0, len(prompt) :])]
    for k in range(2, len(new)):
        if new[k] not in new[:k] and new[k] != 0:
            return new[k], k
    raise AssertionError(f'no usable eos in the free run {new}')


@pytest.mark.parametrize('which', ['llama', 't5'])
def test_greedy_matches_hf_token_for_token(which, request):
    model, gen = request.getfixturevalue(which)
    is_t5 = which == 't5'
    prompts = _prompts([7, 3, 12, 5], seed=0)
    eos, k = _eos_from_free_run(model, prompts[0], is_t5)
    ours = gen.generate(prompts, generate.GenerateConfig(max_new_tokens=N_NEW, eos_ids=(eos,)))
    for p, samples in zip(prompts, ours, strict=True):
        seq = _hf_generate(model, p, is_t5, eos_token_id=eos)
        new = seq[0, 1:] if is_t5 else seq[0, len(p) :]
        assert samples[0].tokens == _cut_at_eos(new, eos)
    assert ours[0][0].tokens[-1] == eos and len(ours[0][0].tokens) == k + 1


@pytest.mark.parametrize('which', ['llama', 't5'])
@pytest.mark.parametrize('early_stopping', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_beam_search_matches_hf_sequences_and_scores(which, early_stopping, request):
    model, gen = request.getfixturevalue(which)
    is_t5 = which == 't5'
    prompts = _prompts([6, 10, 4], seed=1)
    eos, _ = _eos_from_free_run(model, prompts[0], is_t5)
    cfg = generate.GenerateConfig(
        strategy='beam',
        num_beams=4,
        num_return_sequences=4,
        max_new_tokens=N_NEW,
        length_penalty=1.0,
        early_stopping=early_stopping,
        eos_ids=(eos,),
        batch_size=2,
    )
    ours = gen.generate(prompts, cfg)
    saw_eos = False
    for p, hyps in zip(prompts, ours, strict=True):
        out = _hf_generate(
            model,
            p,
            is_t5,
            eos_token_id=eos,
            num_beams=4,
            num_return_sequences=4,
            length_penalty=1.0,
            early_stopping=early_stopping,
            return_dict_in_generate=True,
            output_scores=True,
        )
        for j, h in enumerate(hyps):
            new = out.sequences[j, 1:] if is_t5 else out.sequences[j, len(p) :]
            assert h.tokens == _cut_at_eos(new, eos), (p, j)
            np.testing.assert_allclose(h.score, float(out.sequences_scores[j]), atol=1e-4)
            saw_eos |= h.tokens[-1] == eos
    assert saw_eos  # the eos path was exercised
