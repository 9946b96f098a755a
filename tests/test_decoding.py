"""Oracles for `codellm_jax.decoding` on hand-built Markov chains (no model needed).

The chain is second order: the next-token log-probs depend on the previous two tokens, and
the previous token is READ FROM THE CACHE, so a wrong prefill, a wrong per-row position or a
wrong beam reorder of the cache changes the result. Truth comes from brute-force enumeration.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from codellm_jax import decoding

V = 4
EOS = 3


def _chain(vocab: int, seed: int, eos: int | None = None) -> np.ndarray:
    """log P(next | prev, cur) as a [V, V, V] table."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(vocab, vocab, vocab)) * 2.0
    if eos is not None:
        logits[..., eos] -= 1.0  # keep eos plausible but not dominant
    return np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1))


def _markov_callback(table: np.ndarray):
    """tokens_to_logits for the chain over a blocked cache of tokens (`_cache`).

    Follows the contract of `codellm_jax.models.kv_cache`: the previous token of a query at
    position p is the cached or new token at position p - 1; this call's tokens are
    written at `index` of the last block. A wrong cache view, write slot or beam reorder
    changes the logits.
    """
    table = jnp.asarray(table)

    def tokens_to_logits(tokens_RxT, positions_RxT, cache):
        blocks, index = cache['blocks'], cache['index']
        pos_RxS = jnp.concatenate([b['pos'] for b in blocks] + [positions_RxT], axis=1)
        tok_RxS = jnp.concatenate([b['tok'] for b in blocks] + [tokens_RxT], axis=1)
        want_RxT = positions_RxT - 1
        hit_RxTxS = (pos_RxS[:, None, :] == want_RxT[:, :, None]) & (want_RxT[:, :, None] >= 0)
        prev_RxT = jnp.sum(jnp.where(hit_RxTxS, tok_RxS[:, None, :], 0), axis=-1)
        logits = table[prev_RxT, tokens_RxT]
        last = blocks[-1]
        new_last = {
            'pos': jax.lax.dynamic_update_slice(last['pos'], positions_RxT, (0, index)),
            'tok': jax.lax.dynamic_update_slice(last['tok'], tokens_RxT, (0, index)),
        }
        new_cache = {**cache, 'blocks': (*blocks[:-1], new_last)}
        return logits, {**new_cache, 'index': index + tokens_RxT.shape[1]}

    return tokens_to_logits


def _cache(rows: int, width: int, n_new: int, block: int = 3):
    """A blocked token cache: the prompt's block, then `block`-slot blocks (several loop
    phases even for short generations)."""
    sizes = decoding.cache_blocks(width, n_new, block)
    blocks = tuple(
        {'pos': jnp.full((rows, s), -1, jnp.int32), 'tok': jnp.zeros((rows, s), jnp.int32)}
        for s in sizes
    )
    return {'blocks': blocks, 'index': jnp.int32(0)}


def _seq_logprob(table, prompt, seq) -> float:
    ctx = [0] + list(prompt) if len(prompt) == 1 else list(prompt)
    total = 0.0
    for t in seq:
        total += float(table[ctx[-2], ctx[-1], t])
        ctx.append(t)
    return total


def _finished_sequences(prompt, n_new, eos, table):
    """All (tokens, logprob) that end at eos or at n_new tokens."""
    out = []
    for n in range(1, n_new + 1):
        for seq in itertools.product(range(table.shape[0]), repeat=n):
            body_has_eos = eos is not None and eos in seq[:-1]
            if body_has_eos:
                continue
            if n < n_new and seq[-1] != eos:
                continue
            out.append((seq, _seq_logprob(table, prompt, seq)))
    return out


def _greedy_truth(table, prompt, n_new, eos=None):
    ctx = [0] + list(prompt) if len(prompt) == 1 else list(prompt)
    out = []
    for _ in range(n_new):
        t = int(np.argmax(table[ctx[-2], ctx[-1]]))
        out.append(t)
        ctx.append(t)
        if t == eos:
            break
    return out


@functools.partial(jax.jit, static_argnames=('policy', 'n_new', 'eos_ids', 'stops'))
def _run_decode(prompt, lens, keys, table, *, policy, n_new, eos_ids=(), stops=None):
    stop_arr = None if stops is None else decoding.stop_sequence_array(stops)
    return decoding.decode(
        _markov_callback(table),
        _cache(prompt.shape[0], prompt.shape[1], n_new),
        prompt,
        lens,
        policy=policy,
        max_new_tokens=n_new,
        eos_ids=eos_ids,
        stop_ids_SxM=stop_arr,
        pad_id=-1,
        keys_R=keys,
    )


def _ragged(prompts):
    width = max(len(p) for p in prompts)
    arr = np.zeros((len(prompts), width), np.int32)
    for i, p in enumerate(prompts):
        arr[i, : len(p)] = p
    return jnp.asarray(arr), jnp.asarray([len(p) for p in prompts], jnp.int32)


def test_greedy_ragged_prompts_match_brute_force():
    table = _chain(V, 0, EOS)
    prompts = [[1, 2, 0], [2], [0, 1, 1, 2, 0], [1, 1]]
    prompt, lens = _ragged(prompts)
    out = _run_decode(
        prompt,
        lens,
        decoding.row_keys(0, jnp.arange(4)),
        table,
        policy=decoding.Greedy(),
        n_new=6,
        eos_ids=(EOS,),
    )
    for r, p in enumerate(prompts):
        truth = _greedy_truth(table, p, 6, EOS)
        n = int(out.lengths_R[r])
        assert list(np.asarray(out.tokens_RxN[r, :n])) == truth
        assert np.all(np.asarray(out.tokens_RxN[r, n:]) == -1)
        np.testing.assert_allclose(out.scores_R[r], _seq_logprob(table, p, truth), atol=1e-5)


def test_stop_sequence_and_eos_padding():
    table = _chain(V, 0)
    prompt, lens = _ragged([[1, 2, 0]])
    free = _greedy_truth(table, [1, 2, 0], 8)
    stop = tuple(free[2:4])  # stops right after generated tokens 2..3
    out = _run_decode(
        prompt,
        lens,
        decoding.row_keys(0, jnp.arange(1)),
        table,
        policy=decoding.Greedy(),
        n_new=8,
        stops=(stop, (9, 9, 9)),
    )
    first = next(i for i in range(1, 8) if tuple(free[i - 1 : i + 1]) == stop)
    assert int(out.lengths_R[0]) == first + 1
    assert list(np.asarray(out.tokens_RxN[0, : first + 1])) == free[: first + 1]
    assert np.all(np.asarray(out.tokens_RxN[0, first + 1 :]) == -1)
    assert bool(out.stopped_R[0])


def test_loop_exits_early_when_all_rows_stop():
    calls = []
    table = _chain(V, 0)

    def eos_after_two(tokens, positions, cache):
        jax.debug.callback(lambda: calls.append(1))
        logits, cache = _markov_callback(table)(tokens, positions, cache)
        # Row r emits eos once its position reaches 3 + r: rows stop at different steps.
        stop = positions >= 3 + jnp.arange(tokens.shape[0])[:, None]
        return jnp.where(
            stop[..., None], jnp.zeros_like(logits).at[..., EOS].set(10.0), logits
        ), cache

    @jax.jit
    def run(prompt, lens):
        return decoding.decode(
            eos_after_two,
            _cache(2, 2, 90, block=30),
            prompt,
            lens,
            policy=decoding.Greedy(),
            max_new_tokens=90,
            eos_ids=(EOS,),
        )

    res = run(jnp.asarray([[1, 2], [1, 2]]), jnp.asarray([2, 2]))
    jax.effects_barrier()
    # Row 0: tokens at positions 2 (logits of pos 1), 3, then eos from pos 3 -> 2 + eos.
    assert list(np.asarray(res.lengths_R)) == [3, 4]
    assert int(res.tokens_RxN[0, 2]) == EOS and int(res.tokens_RxN[1, 3]) == EOS
    assert len(calls) == 4  # prefill + 3 steps, not 90


def test_top_k_1_and_tiny_top_p_equal_greedy():
    table = _chain(V, 1)
    prompts = [[1, 2, 0], [2], [0, 1, 1, 2]]
    prompt, lens = _ragged(prompts)
    keys = decoding.row_keys(3, jnp.arange(3))
    greedy = _run_decode(prompt, lens, keys, table, policy=decoding.Greedy(), n_new=7)
    for policy in (
        decoding.Sampling(top_k=1),
        decoding.Sampling(top_p=1e-6),
        decoding.Sampling(temperature=0.7, top_k=1, top_p=0.5, min_p=0.2),
    ):
        out = _run_decode(prompt, lens, keys, table, policy=policy, n_new=7)
        np.testing.assert_array_equal(out.tokens_RxN, greedy.tokens_RxN)


def _np_filtered_probs(logits, temperature, top_k, top_p, min_p):
    """Independent numpy reference of HF's warper chain."""
    x = logits.astype(np.float64) / temperature
    if top_k:
        kth = np.sort(x)[::-1][top_k - 1]
        x = np.where(x < kth, -np.inf, x)
    if top_p < 1.0:
        p = np.exp(x - x.max())
        p /= p.sum()
        order = np.argsort(-p, kind='stable')
        before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
        drop = order[before >= top_p]
        x[drop] = -np.inf
    if min_p > 0:
        p = np.exp(x - x.max())
        p /= p.sum()
        x = np.where(p < min_p * p.max(), -np.inf, x)
    p = np.exp(x - x.max())
    return p / p.sum()


@pytest.mark.parametrize(
    'temperature,top_k,top_p,min_p',
    [
        (1.0, 0, 1.0, 0.0),
        (0.8, 5, 1.0, 0.0),
        (1.3, 0, 0.7, 0.0),
        (1.0, 0, 1.0, 0.1),
        (0.9, 8, 0.8, 0.05),
    ],
)
def test_sampled_frequencies_match_truncated_distribution(temperature, top_k, top_p, min_p):
    vocab, n = 12, 40000
    logits = np.random.default_rng(7).normal(size=(vocab,)).astype(np.float32) * 1.5
    policy = decoding.Sampling(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    expected = _np_filtered_probs(logits, temperature, top_k, top_p, min_p)
    np.testing.assert_allclose(
        jax.nn.softmax(policy.filter_logits(jnp.asarray(logits)[None]))[0], expected, atol=1e-6
    )
    keys = decoding.row_keys(11, jnp.arange(n))
    tokens = jax.jit(policy.next_tokens)(jnp.broadcast_to(jnp.asarray(logits), (n, vocab)), keys)
    counts = np.bincount(np.asarray(tokens), minlength=vocab)
    support = expected > 0
    assert np.all(counts[~support] == 0), 'sampled a filtered-out token'
    _, pvalue = scipy.stats.chisquare(counts[support], expected[support] * n)
    assert pvalue > 1e-3, (counts, expected * n)


def test_per_row_rng_is_independent_of_batch_composition():
    table = _chain(V, 2)
    policy = decoding.Sampling(temperature=1.5, top_p=0.95)
    prompts = [[1, 2, 0], [2], [0, 1, 1, 2, 0], [1, 1]]
    prompt, lens = _ragged(prompts)
    ids = jnp.asarray([10, 11, 12, 13])
    full = _run_decode(prompt, lens, decoding.row_keys(5, ids), table, policy=policy, n_new=12)
    sub_prompt, sub_lens = _ragged([prompts[2], prompts[0]])
    sub = _run_decode(
        sub_prompt,
        sub_lens,
        decoding.row_keys(5, ids[jnp.asarray([2, 0])]),
        table,
        policy=policy,
        n_new=12,
    )
    np.testing.assert_array_equal(sub.tokens_RxN[0], full.tokens_RxN[2])
    np.testing.assert_array_equal(sub.tokens_RxN[1], full.tokens_RxN[0])
    # and different rows really draw different samples
    assert not np.array_equal(full.tokens_RxN[0], full.tokens_RxN[3])


def _run_beam(table, prompts, n_new, nb, eos_ids=(), block=3, **kw):
    prompt, lens = _ragged(prompts)

    @jax.jit
    def run(prompt, lens):
        return decoding.beam_search(
            _markov_callback(table),
            _cache(prompt.shape[0] * nb, prompt.shape[1], n_new, block),
            prompt,
            lens,
            num_beams=nb,
            max_new_tokens=n_new,
            eos_ids=eos_ids,
            pad_id=-1,
            **kw,
        )

    return run(prompt, lens)


@pytest.mark.parametrize('block', [3, 0])  # the prompt's block alone (not reordered) or not
def test_beam_without_eos_returns_brute_force_top_sequences(block):
    table = _chain(3, 4)
    prompts, n_new, nb = [[1, 2], [0]], 3, 9  # all 3**(3-1) live prefixes fit in 9 beams
    out = _run_beam(table, prompts, n_new, nb, length_penalty=0.7, block=block)
    for b, p in enumerate(prompts):
        scored = sorted(
            ((_seq_logprob(table, p, s), s) for s in itertools.product(range(3), repeat=n_new)),
            reverse=True,
        )[:nb]
        got = [tuple(np.asarray(out.tokens_BxNbxN[b, j])) for j in range(nb)]
        assert got == [s for _, s in scored]
        np.testing.assert_allclose(
            out.scores_BxNb[b], [lp / n_new**0.7 for lp, _ in scored], rtol=1e-5
        )


@pytest.mark.parametrize('style,alpha', [('hf', 0.0), ('hf', 1.0), ('t5x', 0.6)])
def test_beam_with_eos_returns_brute_force_top_hypotheses(style, alpha):
    vocab, eos, n_new, nb = 3, 2, 3, 12  # every candidate fits in the top num_beams
    table = _chain(vocab, 5, eos)
    prompts = [[1, 0], [0]]
    out = _run_beam(
        table,
        prompts,
        n_new,
        nb,
        eos_ids=(eos,),
        length_penalty=alpha,
        length_penalty_style=style,
        early_stopping='never',
    )
    pen = decoding.length_penalty_fn(alpha, style)
    for b, p in enumerate(prompts):
        scored = sorted(
            ((lp / float(pen(len(s))), s) for s, lp in _finished_sequences(p, n_new, eos, table)),
            reverse=True,
        )[:nb]
        for j, (score, seq) in enumerate(scored):
            n = int(out.lengths_BxNb[b, j])
            assert tuple(np.asarray(out.tokens_BxNbxN[b, j, :n])) == seq
            assert np.all(np.asarray(out.tokens_BxNbxN[b, j, n:]) == -1)
            np.testing.assert_allclose(out.scores_BxNb[b, j], score, rtol=1e-5)


@pytest.mark.parametrize('eos_ids', [(), (EOS,)])
def test_one_beam_equals_greedy(eos_ids):
    table = _chain(V, 6, EOS)
    prompts = [[1, 2, 0], [2], [0, 1, 1, 2, 0]]
    prompt, lens = _ragged(prompts)
    greedy = _run_decode(
        prompt,
        lens,
        decoding.row_keys(0, jnp.arange(3)),
        table,
        policy=decoding.Greedy(),
        n_new=6,
        eos_ids=eos_ids,
    )
    beam = _run_beam(table, prompts, 6, 1, eos_ids=eos_ids, early_stopping=True)
    np.testing.assert_array_equal(beam.tokens_BxNbxN[:, 0], greedy.tokens_RxN)
    np.testing.assert_allclose(
        beam.scores_BxNb[:, 0] * beam.lengths_BxNb[:, 0], greedy.scores_R, rtol=1e-5
    )


def test_reorder_cache_gathers_only_the_blocks_along_the_row_axis():
    cache = {
        'blocks': (
            {'pos': jnp.arange(3 * 2).reshape(3, 2), 'k': jnp.arange(3 * 4).reshape(3, 2, 2)},
            {'pos': jnp.arange(3 * 1).reshape(3, 1) + 9, 'k': jnp.arange(3).reshape(3, 1, 1)},
        ),
        'index': jnp.int32(1),
        'cross': {'k': jnp.arange(4).reshape(1, 2, 2)},
    }
    rows = jnp.asarray([2, 2, 0])
    out = decoding.reorder_cache(cache, rows)
    leaves = zip(jax.tree.leaves(out['blocks']), jax.tree.leaves(cache['blocks']), strict=True)
    for got, want in leaves:
        np.testing.assert_array_equal(got, want[rows])
    assert out['cross']['k'] is cache['cross']['k']
    assert out['index'] is cache['index']


def test_phase_plan_covers_every_step_once_in_its_block():
    # Prompt width 4 in a 6-slot first block, then blocks of 3, 3, 4: 13 new tokens.
    sizes, width, n_new = (6, 3, 3, 4), 4, 13
    phases = decoding.phases.plan(sizes, width, n_new)
    steps = [s for ph in phases for s in range(ph.first_step, ph.end_step)]
    assert steps == list(range(1, n_new))
    starts = np.cumsum((0,) + sizes)
    for ph in phases:
        for s in range(ph.first_step, ph.end_step):
            slot = width + s - 1
            assert starts[ph.num_blocks - 1] <= slot < starts[ph.num_blocks]
            assert ph.block_start == starts[ph.num_blocks - 1]
    assert [ph.num_blocks for ph in phases] == [1, 2, 3, 4]
    assert decoding.cache_blocks(4, 13, 5) == (4, 5, 5, 2)
    assert decoding.cache_blocks(4, 13, 0) == (16,)
    assert decoding.cache_blocks(4, 1, 5) == (4,)
    with pytest.raises(ValueError, match='need 16'):
        decoding.phases.plan((4, 5, 5, 1), 4, 13)
    with pytest.raises(ValueError, match='first cache block'):
        decoding.phases.plan((3, 20), 4, 13)


def test_bad_sampling_settings_are_rejected():
    with pytest.raises(ValueError, match='top_p'):
        decoding.Sampling(top_p=0.0)
    with pytest.raises(ValueError, match='top_p'):
        decoding.Sampling(top_p=1.5)
    with pytest.raises(ValueError, match='temperature'):
        decoding.make_policy('sample', temperature=-1.0)
    with pytest.raises(ValueError, match='top_k'):
        decoding.Sampling(top_k=10).validate(vocab_size=5)
    with pytest.raises(ValueError, match='min_p'):
        decoding.Sampling(min_p=2.0)
    assert decoding.make_policy('sample', temperature=0.0) == decoding.Greedy()


def test_buckets():
    assert decoding.pow2_buckets(16, 100) == (16, 32, 64, 128)
    assert [decoding.bucket_length(n, (16, 32, 64)) for n in (1, 16, 17, 64, 65, 130)] == [
        16,
        16,
        32,
        64,
        128,
        192,
    ]


def test_sample_rows_never_draws_a_filtered_token():
    keys = decoding.row_keys(3, jnp.arange(2000))
    neg = -jnp.inf
    got = decoding.sampling.sample_rows(
        keys, jnp.tile(jnp.asarray([[neg, 0.0, 0.0, neg]]), (2000, 1))
    )
    assert set(np.asarray(got).tolist()) == {1, 2}
    got = decoding.sampling.sample_rows(keys, jnp.tile(jnp.asarray([[neg, 5.0, neg]]), (2000, 1)))
    assert set(np.asarray(got).tolist()) == {1}
    # Row b depends on its key only.
    logits = jax.random.normal(jax.random.key(0), (2000, 7))
    alone = decoding.sampling.sample_rows(keys[5:6], logits[5:6])
    assert int(alone[0]) == int(decoding.sampling.sample_rows(keys, logits)[5])
