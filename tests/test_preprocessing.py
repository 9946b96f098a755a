"""Pure transforms: brute-force references and hand-built cases."""

import numpy as np
import pytest

from codellm_jax.data import preprocessing as pp
from codellm_jax.data import special_tokens as st

SPECIAL = st.SpecialIds(
    pad=0,
    eos=1,
    unk=2,
    bos=3,
    fim_prefix=4,
    fim_middle=5,
    fim_suffix=6,
    system=7,
    user=8,
    assistant=9,
    end_of_turn=10,
    sentinel_ids=tuple(range(11, 111)),
)


def test_lm_example_shifts_by_one():
    ex = pp.lm_example([20, 21, 22], eos_id=1, bos_id=3)
    np.testing.assert_array_equal(ex['input_tokens'], [3, 20, 21, 22])
    np.testing.assert_array_equal(ex['target_tokens'], [20, 21, 22, 1])
    np.testing.assert_array_equal(ex['loss_weights'], [1, 1, 1, 1])
    assert ex['input_tokens'].dtype == np.int32 and ex['loss_weights'].dtype == np.float32


@pytest.mark.parametrize('inputs_length', [512, 626, 128, 64])
def test_span_corruption_lengths_match_t5_and_brute_force(inputs_length):
    got = pp.span_corruption_lengths(inputs_length, 0.15, 3.0)

    def lengths(n):  # brute force of the T5 helper's definition
        noise = round(n * 0.15)
        spans = round(noise / 3.0)
        return n - noise + spans + 1, noise + spans + 1

    best = max(n for n in range(1, 2 * inputs_length) if lengths(n)[0] <= inputs_length)
    assert got == (best, lengths(best)[1])
    if inputs_length == 512:
        assert got == (568, 114)  # T5 paper setting: 568 raw tokens → 512 inputs, 114 targets


def test_noise_mask_counts_and_shape():
    rng = np.random.default_rng(0)
    for length in (10, 57, 568):
        mask = pp.random_spans_noise_mask(length, 0.15, 3.0, rng)
        assert mask.shape == (length,) and not mask[0]
        assert mask.sum() == min(max(round(length * 0.15), 1), length - 1)
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        assert starts.sum() == max(round(mask.sum() / 3.0), 1)


def _uncorrupt(inputs, targets):
    """Reference inverse: put each sentinel's span back into the inputs."""
    spans, cur = {}, None
    for t in targets[:-1]:
        if t in SPECIAL.sentinel_ids:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inputs[:-1]:
        out.extend(spans[t] if t in SPECIAL.sentinel_ids else [t])
    return out


def test_span_corruption_is_invertible_and_fits_lengths():
    rng = np.random.default_rng(1)
    raw_len, targets_len = pp.span_corruption_lengths(512)
    ids = list(rng.integers(200, 8000, size=raw_len))
    inputs, targets = pp.span_corruption(ids, rng, SPECIAL)
    assert _uncorrupt(inputs, targets) == ids
    assert len(inputs) == 512 and len(targets) == targets_len
    assert inputs[-1] == SPECIAL.eos and targets[-1] == SPECIAL.eos
    assert targets[0] == SPECIAL.sentinel_ids[0]


def test_fim_orders_rebuild_the_document():
    pre, mid, suf = [20, 21], [30], [40, 41, 42]
    psm = pp.fim_tokens(pre, mid, suf, SPECIAL, spm=False)
    assert psm == [4, 20, 21, 6, 40, 41, 42, 5, 30]
    spm = pp.fim_tokens(pre, mid, suf, SPECIAL, spm=True)
    assert spm == [4, 6, 40, 41, 42, 5, 20, 21, 30]


def test_maybe_fim_rates():
    def enc(s):
        return [100 + ord(c) for c in s]

    text = 'def f(x):\n    return x\n'
    rng = np.random.default_rng(0)
    assert pp.maybe_fim(text, enc, SPECIAL, rng, fim_rate=0.0, spm_rate=0.5) == enc(text)
    n_fim = n_spm = 0
    for _ in range(400):
        out = pp.maybe_fim(text, enc, SPECIAL, rng, fim_rate=0.5, spm_rate=0.5)
        if out[0] == SPECIAL.fim_prefix:
            n_fim += 1
            n_spm += out[1] == SPECIAL.fim_suffix
            # Reassemble the document from PSM or SPM order.
            mid_at = out.index(SPECIAL.fim_middle)
            if out[1] == SPECIAL.fim_suffix:
                suffix, rest = out[2:mid_at], out[mid_at + 1 :]
                doc = rest + suffix
            else:
                suf_at = out.index(SPECIAL.fim_suffix)
                doc = out[1:suf_at] + out[mid_at + 1 :] + out[suf_at + 1 : mid_at]
            assert doc == enc(text)
    assert 150 < n_fim < 250 and 0.3 < n_spm / n_fim < 0.7


def test_sft_weights_and_truncation():
    ex, truncated = pp.sft_example([20, 21, 22], [30, 31], eos_id=1, max_len=16)
    assert not truncated
    np.testing.assert_array_equal(ex['input_tokens'], [20, 21, 22, 30, 31])
    np.testing.assert_array_equal(ex['target_tokens'], [21, 22, 30, 31, 1])
    np.testing.assert_array_equal(ex['loss_weights'], [0, 0, 1, 1, 1])
    prompt, response = list(range(100, 130)), list(range(200, 230))
    ex, truncated = pp.sft_example(prompt, response, eos_id=1, max_len=20)
    assert truncated and len(ex['input_tokens']) == 20
    tokens = list(ex['input_tokens']) + [ex['target_tokens'][-1]]
    # The prompt keeps its end and the response its start; the eos stays.
    assert tokens[:10] == prompt[-10:] and tokens[10:20] == response[:10] and tokens[-1] == 1


def test_chat_weights_only_assistant_turns():
    def enc(s):
        return [100 + ord(c) for c in s]

    msgs = [
        {'role': 'system', 'content': 's'},
        {'role': 'user', 'content': 'hi'},
        {'role': 'assistant', 'content': 'yo'},
    ]
    tokens, weights = pp.chat_tokens(msgs, enc, SPECIAL)
    assert tokens == [7, 215, 10, 8, 204, 205, 10, 9, 221, 211, 10, 1]
    assert weights == [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match='role'):
        pp.chat_tokens([{'role': 'robot', 'content': ''}], enc, SPECIAL)


def test_seq2seq_shift_right_and_truncation():
    ex, truncated = pp.seq2seq_example([20, 21], [30, 31, 32], 1, 8, 8)
    assert not truncated
    np.testing.assert_array_equal(ex['encoder_input_tokens'], [20, 21, 1])
    np.testing.assert_array_equal(ex['decoder_target_tokens'], [30, 31, 32, 1])
    np.testing.assert_array_equal(ex['decoder_input_tokens'], [0, 30, 31, 32])
    ex, truncated = pp.seq2seq_example(list(range(20, 40)), [30], 1, 5, 8)
    assert truncated
    np.testing.assert_array_equal(ex['encoder_input_tokens'], [20, 21, 22, 23, 1])


def test_positions_from_segment_ids_brute_force():
    rng = np.random.default_rng(0)
    seg = np.sort(rng.integers(0, 5, size=(3, 40)), axis=-1)
    seg = np.where(seg == 0, 0, seg)  # (segments first, zeros...) mixed orders below
    seg = np.concatenate([seg[:, ::-1][:, :20], np.zeros((3, 3), int), seg[:, :17]], axis=1)
    expected = np.zeros_like(seg)
    for b in range(seg.shape[0]):
        pos = 0
        for i in range(seg.shape[1]):
            pos = 0 if i == 0 or seg[b, i] != seg[b, i - 1] else pos + 1
            expected[b, i] = pos if seg[b, i] > 0 else 0
    np.testing.assert_array_equal(pp.positions_from_segment_ids(seg), expected)
    assert pp.packing_efficiency(np.array([[1, 1, 0, 0]])) == 0.5
