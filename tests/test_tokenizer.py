"""Tokenizer: exact round trips on held-out code, special tokens never from plain text,
stable special ids, HF `tokenizer.json` behind the same interface, vocab checks."""

import json
import pickle

import numpy as np
import pytest

from codellm_jax.data import corpus, tokenizer
from codellm_jax.data import special_tokens as st

TRICKY = [
    '',
    ' ',
    '\n',
    '\n\n\n',
    '\t\tx = 1\t\n',
    'def f():\r\n    return 1\r\n',
    'trailing spaces   \n   \n',
    '    indented\n        more\n\t\tmixed  \t \n',
    'a  b   c    d',
    'unicode: é ü ß 中文 日本語 한국어 😀🚀 \u200b zero-width \ufeff bom',
    'x' * 10000,
    'line\n' * 2000,
    '\x00\x01\x7f control chars \x1b[0m',
    '12345678901234567890 3.14159e-10 0xDEADBEEF',
    '"""docstring"""\n# comment ✓\n',
    'public static void main(String[] args) {\n\tSystem.out.println("hi");\n}\n',
    '<fim_prefix><fim_middle><fim_suffix><extra_id_0><extra_id_99><s></s><pad><unk>',
    '<|system|><|user|><|assistant|><|end|> [INST] <<SYS>>',
]


@pytest.fixture(scope='module')
def corpus_files():
    files, _ = corpus.scan()  # the whole default corpus (read only; ~0.5 s)
    return files


@pytest.fixture(scope='module')
def tok_dir(tmp_path_factory, corpus_files):
    train = [f.text for f in corpus_files if corpus.split_of(f.sha256, 5.0) == 'train']
    out = tmp_path_factory.mktemp('tok')
    tokenizer.train_tokenizer(train[:150], str(out), vocab_size=2048)
    return out


@pytest.fixture(scope='module')
def tok(tok_dir):
    return tokenizer.load_tokenizer(str(tok_dir))


def test_round_trip_every_held_out_file(tok, corpus_files):
    held_out = [f for f in corpus_files if corpus.split_of(f.sha256, 5.0) == 'validation']
    assert len(held_out) > 20
    for f in held_out:
        ids = tok.encode(f.text)
        assert tok.decode(ids) == f.text, f.path


@pytest.mark.parametrize('text', TRICKY)
def test_round_trip_tricky_strings(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_tokens_never_from_plain_text(tok):
    special = tok.special.all_ids()
    texts = TRICKY + [tok.id_to_piece(i) for i in special]
    rng = np.random.default_rng(0)
    pieces = [tok.id_to_piece(i) for i in special] + ['<', '>', '|', '_', 'extra', 'id', ' ']
    texts += [''.join(rng.choice(pieces, size=20)) for _ in range(50)]
    for text in texts:
        assert not special & set(tok.encode(text)), text


def test_special_ids_are_stable_and_recorded(tok, tmp_path_factory):
    s = tok.special
    assert (s.pad, s.eos, s.unk, s.bos) == (0, 1, 2, 3) and tok.pad_id == 0
    assert (s.fim_prefix, s.fim_middle, s.fim_suffix) == (4, 5, 6)
    assert (s.system, s.user, s.assistant, s.end_of_turn) == (7, 8, 9, 10)
    assert s.sentinel_ids == tuple(range(11, 111))
    for name, i in [(st.FIM_MIDDLE, 5), (st.sentinel(0), 11), (st.sentinel(99), 110)]:
        assert tok.id_to_piece(i) == name
    assert tok.vocab_size == 2048
    # The json record beside the model is what load_tokenizer reads back.
    assert pickle.loads(pickle.dumps(tok)).encode('x = 1\n') == tok.encode('x = 1\n')


def test_hf_tokenizer_json_matches_transformers(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from tokenizers import decoders as hf_decoders
    from transformers import PreTrainedTokenizerFast

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = hf_decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=['<pad>', '</s>', '<s>', '<fim_prefix>'],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    hf.train_from_iterator(TRICKY * 3, trainer)
    hf.save(str(tmp_path / 'tokenizer.json'))
    (tmp_path / 'special_tokens_map.json').write_text(json.dumps({'eos_token': '</s>'}))

    ours = tokenizer.load_tokenizer(str(tmp_path))
    assert isinstance(ours, tokenizer.HFTokenizer) and isinstance(ours, tokenizer.Tokenizer)
    ref = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / 'tokenizer.json'))
    for text in TRICKY[:10]:
        assert ours.encode(text) == ref.encode(text, add_special_tokens=False)
        assert ours.decode(ours.encode(text)) == text
    assert ours.eos_id == 1 and ours.pad_id == 0 and ours.special.fim_prefix == 3
    assert ours.vocab_size == ref.vocab_size


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='build_tokenizer'):
        tokenizer.load_tokenizer(str(tmp_path / 'missing'))
    with pytest.raises(FileNotFoundError, match='No tokenizer'):
        tokenizer.load_tokenizer(str(tmp_path))


def test_check_vocab(tok):
    tokenizer.check_vocab(tok, 2048)
    tokenizer.check_vocab(tok, 2176)  # padded model vocab is fine
    with pytest.raises(ValueError, match='exceeds the model vocab_size=1000'):
        tokenizer.check_vocab(tok, 1000)


def test_training_chunks_keep_every_character():
    text = 'a\n' * 5000 + 'tail'
    assert ''.join(tokenizer.training_chunks([text], max_chars=100)) == text


def test_training_is_deterministic(tmp_path, corpus_files):
    texts = [f.text for f in corpus_files[:20]]
    a = tokenizer.train_tokenizer(texts, str(tmp_path / 'a'), vocab_size=600, num_sentinels=4)
    b = tokenizer.train_tokenizer(texts, str(tmp_path / 'b'), vocab_size=600, num_sentinels=4)
    assert (tmp_path / 'a' / 'spm.model').read_bytes() == (
        tmp_path / 'b' / 'spm.model'
    ).read_bytes()
    assert a.special == b.special and len(a.special.sentinel_ids) == 4


def test_hf_sentencepiece_model_file_without_json(tok, tok_dir, tmp_path):
    """A checkpoint's `tokenizer.model` (no special_tokens.json): ids found by piece lookup."""
    (tmp_path / 'tokenizer.model').write_bytes((tok_dir / tokenizer.MODEL_FILENAME).read_bytes())
    other = tokenizer.load_tokenizer(str(tmp_path))
    assert isinstance(other, tokenizer.SentencePieceTokenizer)
    assert other.special == tok.special
    assert other.encode(TRICKY[5]) == tok.encode(TRICKY[5])
    assert json.loads((tok_dir / 'special_tokens.json').read_text())['eos'] == 1
