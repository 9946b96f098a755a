"""grain pipelines: batch contract, brute-force stream oracles, determinism, resume (also with
multiprocess prefetch and grain's orbax checkpoint handler), sharding, global batches."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from codellm_jax.data import corpus, pipeline, preprocessing, tfds_builders, tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ = 64
CHAT = [
    {'role': 'system', 'content': 'Be brief.'},
    {'role': 'user', 'content': 'Sum of 2 and 3?'},
    {'role': 'assistant', 'content': '5'},
    {'role': 'user', 'content': 'And 4 and 4?'},
    {'role': 'assistant', 'content': '8, of course.'},
]


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """A tokenizer and the four datasets, built small into a temp data dir."""
    base = tmp_path_factory.mktemp('data')
    files, _ = corpus.scan(max_files=40)
    tok_dir = str(base / 'tok')
    tokenizer.train_tokenizer([f.text for f in files], tok_dir, vocab_size=1024)
    data_dir = str(base / 'tfds')
    tfds_builders.build('code_corpus', data_dir, max_files=40)
    sft = base / 'sft.jsonl'
    lines = [{'prompt': f'Say {i}:', 'response': f'print({i})\n' * (1 + i % 5)} for i in range(40)]
    lines += [{'messages': CHAT}] * 8
    sft.write_text('\n'.join(json.dumps(x) for x in lines))
    tfds_builders.build('instructions', data_dir, jsonl_files={'train': str(sft)})
    tfds_builders.build('code_translation', data_dir, root=ROOT)
    cfg = pipeline.DataConfig(data_dir=data_dir, tokenizer_path=tok_dir)
    return cfg, tokenizer.load_tokenizer(tok_dir)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _make(env, task, dataset, **kw):
    cfg, tok = env
    cfg = dataclasses.replace(cfg, task=task, dataset=dataset, **kw.pop('cfg', {}))
    args = dict(split='train', seq_len=SEQ, batch_size=4, seed=0) | kw
    return pipeline.make_iterator(cfg, tok, **args)


def _assert_equal_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


TASKS = [
    ('lm', 'code_corpus'),
    ('fim', 'code_corpus'),
    ('sft', 'instructions'),
    ('seq2seq', 'code_translation'),
    ('span_corruption', 'code_corpus'),
]


@pytest.mark.parametrize('task,dataset', TASKS)
def test_batch_contract_determinism_and_resume(env, task, dataset):
    cfg = dataclasses.replace(env[0], task=task, dataset=dataset)
    spec = pipeline.batch_spec(cfg, seq_len=SEQ, batch_size=4)
    it = _make(env, task, dataset)
    first = _take(it, 3)
    for b in first:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == spec
    state = json.loads(json.dumps(it.get_state()))  # plain JSON
    rest = _take(it, 3)
    resumed = _make(env, task, dataset)
    resumed.set_state(state)
    _assert_equal_batches(_take(resumed, 3), rest)
    _assert_equal_batches(_take(_make(env, task, dataset), 6), first + rest)  # same seed
    other = _take(_make(env, task, dataset, seed=1), 1)[0]
    key = 'input_tokens' if task in pipeline.DECODER_TASKS else 'encoder_input_tokens'
    assert not np.array_equal(other[key], first[0][key])


def _segments(row_ids, seg):
    return [row_ids[seg == s] for s in np.unique(seg[seg > 0])]


@pytest.mark.parametrize('task', ['lm', 'fim'])
def test_decoder_rows_shift_within_segments(env, task):
    for b in _take(_make(env, task, 'code_corpus', cfg={'fim_rate': 1.0}), 4):
        seg, pos = b['segment_ids'], b['positions']
        same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        np.testing.assert_array_equal(
            b['target_tokens'][:, :-1][same], b['input_tokens'][:, 1:][same]
        )
        np.testing.assert_array_equal(pos, preprocessing.positions_from_segment_ids(seg))
        assert np.all(b['loss_weights'][seg == 0] == 0) and np.all(b['input_tokens'][seg == 0] == 0)


def test_lm_stream_equals_brute_force_concatenation(env):
    """Unshuffled, one epoch: the packed rows are the documents' LM examples concatenated."""
    cfg, tok = env
    it = _make(env, 'lm', 'code_corpus', cfg={'shuffle': False}, num_epochs=1)
    batches = list(it)
    got = np.concatenate([b['input_tokens'][b['segment_ids'] > 0] for b in batches])
    src = tfds_builders.data_source(cfg.data_dir, 'code_corpus', 'train')
    ref = np.concatenate(
        [
            preprocessing.lm_example(tok.encode(src[i]['content'].decode()), tok.eos_id)[
                'input_tokens'
            ]
            for i in range(len(src))
        ]
    )
    assert len(got) == len(batches) * 4 * SEQ  # concat-then-split: no padding
    np.testing.assert_array_equal(got, ref[: len(got)])
    assert len(ref) - len(got) < 4 * SEQ  # only the last incomplete batch is dropped


def test_row_shuffle_permutes_rows_within_windows_and_resumes(env):
    """Packed rows are shuffled within windows of `row_shuffle_window` (so one long document
    does not fill whole batches), deterministically and resumably from mid-window."""
    kw = dict(batch_size=1, num_epochs=1)
    plain = _take(_make(env, 'lm', 'code_corpus', cfg={'shuffle': False}, **kw), 16)
    cfg = {'shuffle': False, 'row_shuffle_window': 8}
    it = _make(env, 'lm', 'code_corpus', cfg=cfg, **kw)
    mixed = _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    mixed += _take(it, 11)

    def rows(batches):
        return [b['input_tokens'][0].tobytes() for b in batches]

    for start in (0, 8):
        assert sorted(rows(mixed[start : start + 8])) == sorted(rows(plain[start : start + 8]))
    assert rows(mixed) != rows(plain)
    resumed = _make(env, 'lm', 'code_corpus', cfg=cfg, **kw)
    resumed.set_state(state)
    _assert_equal_batches(_take(resumed, 11), mixed[5:])
    with pytest.raises(ValueError, match='row_shuffle_window'):
        dataclasses.replace(env[0], row_shuffle_window=-1)


def test_sft_loss_weights_cover_response_and_eos_only(env):
    _, tok = env
    responses = {tuple(tok.encode(f'print({i})\n' * (1 + i % 5)) + [tok.eos_id]) for i in range(40)}
    s = tok.special
    chat_weighted = tuple(
        tok.encode('5') + [s.end_of_turn] + tok.encode('8, of course.') + [s.end_of_turn, s.eos]
    )
    seen_chat = seen_pair = 0
    for b in _take(_make(env, 'sft', 'instructions', batch_size=8), 6):
        for row in range(8):
            seg = b['segment_ids'][row]
            for s_id in np.unique(seg[seg > 0]):
                m = seg == s_id
                weighted = tuple(b['target_tokens'][row][m][b['loss_weights'][row][m] > 0])
                if b['input_tokens'][row][m][0] == s.system:
                    assert weighted == chat_weighted
                    seen_chat += 1
                else:
                    assert weighted in responses
                    seen_pair += 1
    assert seen_chat and seen_pair


def test_seq2seq_decoder_inputs_are_shifted_targets(env):
    for b in _take(_make(env, 'seq2seq', 'code_translation', seq_len=256), 3):
        seg, tgt, inp = (
            b['decoder_segment_ids'],
            b['decoder_target_tokens'],
            b['decoder_input_tokens'],
        )
        starts = (seg > 0) & (b['decoder_positions'] == 0)
        assert np.all(inp[starts] == 0)
        same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        np.testing.assert_array_equal(inp[:, 1:][same], tgt[:, :-1][same])
        assert np.all(b['decoder_loss_weights'] == (seg > 0))


def test_span_corruption_rows_fill_the_encoder(env):
    _, tok = env
    sentinels = set(tok.special.sentinel_ids)
    effs = []
    for b in _take(_make(env, 'span_corruption', 'code_corpus'), 3):
        effs.append(preprocessing.packing_efficiency(b['encoder_segment_ids']))
        for row in range(4):
            enc = b['encoder_input_tokens'][row]
            assert enc[enc > 0][-1] == tok.eos_id and sentinels & set(enc.tolist())
    # Raw chunk length is chosen so the corrupted input fills the row (T5's helper).
    assert np.mean(effs) > 0.95


def test_epochs_reshuffle_and_processes_partition(env):
    cfg, _ = env
    src = tfds_builders.data_source(cfg.data_dir, 'code_corpus', 'train')
    n = len(src)

    def keys(ds, count):
        return [ds[i]['sha256'] for i in range(count)]

    ds = pipeline._records(src, cfg, seed=0, process_index=0, process_count=1, num_epochs=2)
    e0, e1 = keys(ds, 2 * n)[:n], keys(ds, 2 * n)[n:]
    assert sorted(e0) == sorted(e1) and e0 != e1
    shards = [keys(pipeline._records(src, cfg, 0, p, 3, 1), (n - n % 3) // 3) for p in range(3)]
    flat = [k for s in shards for k in s]
    assert len(set(flat)) == len(flat) == n - n % 3


@pytest.mark.slow  # spawns worker processes (~30 s on 2 busy cores)
def test_resume_with_multiprocess_prefetch_and_grain_handler(env, tmp_path):
    import grain
    from etils import epath

    it = _make(env, 'lm', 'code_corpus', cfg={'num_workers': 2})
    _take(it, 2)
    handler = grain.checkpoint.CheckpointHandler()
    ckpt = epath.Path(tmp_path / 'data_state')
    ckpt.mkdir()
    handler.save(ckpt, args=grain.checkpoint.CheckpointSave(it))
    expected = _take(it, 2)
    fresh = _make(env, 'lm', 'code_corpus', cfg={'num_workers': 2})
    handler.restore(ckpt, args=grain.checkpoint.CheckpointRestore(fresh))
    _assert_equal_batches(_take(fresh, 2), expected)
    it.close()
    fresh.close()


def test_to_global_batch_on_fake_devices(env):
    assert jax.device_count() == 8
    mesh = jax.make_mesh((2, 4), ('data', 'fsdp'))
    batch = next(_make(env, 'lm', 'code_corpus', batch_size=8))
    gbatch = pipeline.to_global_batch(batch, mesh, P(('data', 'fsdp')))
    for k, v in gbatch.items():
        assert v.shape == batch[k].shape and v.dtype == batch[k].dtype
        assert v.sharding.spec == P(('data', 'fsdp'))
        np.testing.assert_array_equal(np.asarray(v), batch[k])
        assert v.addressable_shards[0].data.shape == (1, SEQ)


def test_bad_input(env, tmp_path):
    cfg, tok = env
    with pytest.raises(FileNotFoundError, match='build_datasets'):
        pipeline.make_iterator(
            dataclasses.replace(cfg, data_dir=str(tmp_path)), tok, split='train', seq_len=8,
            batch_size=1, seed=0,
        )  # fmt: skip
    with pytest.raises(ValueError, match='task'):
        pipeline.DataConfig(task='mlm')
    with pytest.raises(ValueError, match="cannot read dataset 'code_corpus'"):
        _make(env, 'sft', 'code_corpus')
    with pytest.raises(ValueError, match='process_index'):
        _make(env, 'lm', 'code_corpus', process_index=2, process_count=2)


def test_length_stats_counts_long_examples(env):
    cfg, tok = env
    src = tfds_builders.data_source(cfg.data_dir, 'code_corpus', 'train')
    lm = pipeline.length_stats(cfg, tok, split='train', seq_len=SEQ)
    expected = sum(len(tok.encode(src[i]['content'].decode())) + 1 > SEQ for i in range(len(src)))
    assert lm == {
        'records': len(src),
        'too_long': expected,
        'action': 'split',
        'tokens': lm['tokens'],
    }
    sft_cfg = dataclasses.replace(cfg, task='sft', dataset='instructions')
    short = pipeline.length_stats(sft_cfg, tok, split='train', seq_len=12)
    assert short['action'] == 'truncated' and 0 < short['too_long'] <= short['records'] == 48
    assert pipeline.length_stats(sft_cfg, tok, split='train', seq_len=512)['too_long'] == 0
