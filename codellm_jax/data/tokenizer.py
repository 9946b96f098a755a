"""Tokenizers behind one small interface: our sentencepiece code tokenizer, or a Hugging Face
checkpoint's own (`tokenizer.json` via `tokenizers`, or its sentencepiece `*.model`).

`load_tokenizer(path)` picks the implementation by what the directory holds. Code round-trips
exactly (`decode(encode(s)) == s` for any string: indentation, tabs, `\\r\\n`, any Unicode via
byte fallback). Special tokens are control symbols: plain text never produces them.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from codellm_jax.data import special_tokens as st

MODEL_FILENAME = 'spm.model'


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipelines, prompts and decoding need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def special(self) -> st.SpecialIds: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class _SpecialIdProperties:
    """`pad_id`, `bos_id`, `eos_id` and `special` read from `self._special`."""

    _special: st.SpecialIds

    @property
    def pad_id(self) -> int:
        return self._special.pad

    @property
    def bos_id(self) -> int | None:
        return self._special.bos

    @property
    def eos_id(self) -> int | None:
        return self._special.eos

    @property
    def special(self) -> st.SpecialIds:
        return self._special


class SentencePieceTokenizer(_SpecialIdProperties):
    """A sentencepiece model; picklable (it carries the serialized model proto)."""

    def __init__(self, model_proto: bytes, special: st.SpecialIds | None = None):
        import sentencepiece as spm

        self._proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        if special is None:
            special = st.from_piece_lookup(self._piece_id)
            pad = self._sp.pad_id()
            special = _replace(special, pad=pad if pad >= 0 else 0)
        self._special = special

    def _piece_id(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return None if i == self._sp.unk_id() and piece != self._sp.id_to_piece(i) else i

    @classmethod
    def from_file(cls, path: str, special: st.SpecialIds | None = None):
        with open(path, 'rb') as f:
            return cls(f.read(), special)

    def __getstate__(self):
        return {'proto': self._proto, 'special': self._special}

    def __setstate__(self, state):
        self.__init__(state['proto'], state['special'])

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))


class HFTokenizer(_SpecialIdProperties):
    """A Hugging Face `tokenizer.json` (fast tokenizer), without adding special tokens."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _HFTok

        self._path = path
        self._tok = _HFTok.from_file(path)
        self._special = st.from_piece_lookup(self._tok.token_to_id)
        directory = os.path.dirname(path)
        for name in ('bos_token', 'eos_token', 'pad_token', 'unk_token'):
            self._special = _apply_hf_config(self._special, self._tok, directory, name)

    def __getstate__(self):
        return {'path': self._path}

    def __setstate__(self, state):
        self.__init__(state['path'])

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def _replace(special: st.SpecialIds, **kw) -> st.SpecialIds:
    import dataclasses

    return dataclasses.replace(special, **kw)


def _apply_hf_config(special, tok, directory: str, name: str):
    """Takes bos/eos/pad/unk from `tokenizer_config.json` / `special_tokens_map.json`."""
    import json

    for fname in ('special_tokens_map.json', 'tokenizer_config.json'):
        path = os.path.join(directory, fname)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            value = json.load(f).get(name)
        if isinstance(value, dict):
            value = value.get('content')
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            field = name.split('_')[0]
            return _replace(special, **{field: tok.token_to_id(value)})
    return special


def load_tokenizer(path: str) -> Tokenizer:
    """The tokenizer stored in directory `path` (or a model/`tokenizer.json` file path).

    Order: `tokenizer.json` (HF fast tokenizer) → `spm.model` / `tokenizer.model` / `*.model`
    (sentencepiece, with `special_tokens.json` beside it when present).
    """
    if os.path.isfile(path):
        if path.endswith('.json'):
            return HFTokenizer(path)
        return SentencePieceTokenizer.from_file(path, st.load(os.path.dirname(path)))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f'Tokenizer path {path!r} does not exist. Build one with `python -m '
            f'codellm_jax.data.build_tokenizer --out={path}` or point to a HF checkpoint directory.'
        )
    if os.path.exists(os.path.join(path, 'tokenizer.json')):
        return HFTokenizer(os.path.join(path, 'tokenizer.json'))
    models = [os.path.join(path, n) for n in (MODEL_FILENAME, 'tokenizer.model')]
    models = [m for m in models if os.path.exists(m)] or sorted(glob.glob(f'{path}/*.model'))
    if models:
        return SentencePieceTokenizer.from_file(models[0], st.load(path))
    raise FileNotFoundError(
        f'No tokenizer in {path!r}: expected tokenizer.json, {MODEL_FILENAME}, tokenizer.model '
        f'or *.model; found {sorted(os.listdir(path))}.'
    )


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raises ValueError unless every token id fits the model's embedding table.

    A model's vocab may be padded above the tokenizer's (e.g. to a multiple of 128), never below.
    """
    if tokenizer.vocab_size > model_vocab_size:
        raise ValueError(
            f'Tokenizer vocab_size={tokenizer.vocab_size} exceeds the model vocab_size='
            f'{model_vocab_size}: ids >= {model_vocab_size} would index past the embedding. '
            'Use the tokenizer the model was trained with, or set model.vocab_size >= '
            f'{tokenizer.vocab_size}.'
        )


def training_chunks(texts: Iterable[str], max_chars: int = 4096) -> Iterator[str]:
    """Splits documents into runs of whole lines (keeping `\\n`) of at most ~max_chars."""
    for text in texts:
        buf, n = [], 0
        for line in text.splitlines(keepends=True):
            if n + len(line) > max_chars and buf:
                yield ''.join(buf)
                buf, n = [], 0
            buf.append(line[: max_chars * 4])
            n += len(line)
        if buf:
            yield ''.join(buf)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str,
    *,
    vocab_size: int = 8192,
    num_sentinels: int = st.NUM_SENTINELS,
    max_sentences: int = 200_000,
    num_threads: int = 2,
    seed: int = 0,
) -> SentencePieceTokenizer:
    """Trains a BPE code tokenizer on `texts` and writes `spm.model` + `special_tokens.json`.

    Settings for exact code round trips: identity normalisation, no whitespace collapsing, no
    dummy prefix, whitespace-only pieces (indentation), byte fallback (any Unicode), split
    digits, full character coverage, and a raised max_sentence_length (the 4192-byte default
    silently drops longer training lines).
    """
    import sentencepiece as spm

    os.makedirs(out_dir, exist_ok=True)
    chunks = list(training_chunks(texts))
    if not chunks:
        raise ValueError('train_tokenizer: no training text (empty corpus).')
    if len(chunks) > max_sentences:  # deterministic subsample (sentencepiece's is not seeded)
        keep = np.random.default_rng(seed).choice(len(chunks), max_sentences, replace=False)
        chunks = [chunks[i] for i in sorted(keep)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chunks),
        model_writer=model,
        vocab_size=vocab_size,
        model_type='bpe',
        normalization_rule_name='identity',
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_by_whitespace=True,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=3,
        pad_piece=st.PAD,
        eos_piece=st.EOS,
        unk_piece=st.UNK,
        bos_piece=st.BOS,
        control_symbols=st.control_symbols(num_sentinels),
        num_threads=num_threads,
        minloglevel=2,
    )
    with open(os.path.join(out_dir, MODEL_FILENAME), 'wb') as f:
        f.write(model.getvalue())
    tok = SentencePieceTokenizer(model.getvalue())
    st.save(tok.special, out_dir)
    return tok
