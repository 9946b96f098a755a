"""Synthetic, learnable batches in the batch contract, as a resumable grain iterator.

For smoke tests, benchmarks and the resume tests (no tokenizer or tfds needed). Each row is
a run of consecutive ids (start random, `next = id + 1`, wrapped into [3, V)), right-padded
to a random length, so a model can learn it and masks/weights are exercised. Row r of the
GLOBAL batch i depends only on (seed, i, r): a process holds the global rows
[process_index * B, (process_index + 1) * B), so any number of processes sees the same global
batches. The iterator state is the batch index.
"""

from __future__ import annotations

from collections.abc import Mapping

import grain
import numpy as np

_FIRST_ID = 3  # ids 0..2 are pad / eos / unk


def _runs(rng: np.random.Generator, batch: int, length: int, vocab: int) -> np.ndarray:
    start_B = rng.integers(0, vocab - _FIRST_ID, size=(batch, 1))
    return (start_B + np.arange(length)[None]) % (vocab - _FIRST_ID) + _FIRST_ID


def _lengths(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
    return rng.integers(max(length // 2, 2), length + 1, size=(batch, 1))


def decoder_batch(rng: np.random.Generator, batch: int, length: int, vocab: int) -> dict:
    """`input_tokens`, `target_tokens`, `positions`, `segment_ids` [B, L] int32, weights f32."""
    seq_BxL1 = _runs(rng, batch, length + 1, vocab)
    valid_BxL = np.arange(length)[None] < _lengths(rng, batch, length)
    return {
        'input_tokens': np.where(valid_BxL, seq_BxL1[:, :-1], 0).astype(np.int32),
        'target_tokens': np.where(valid_BxL, seq_BxL1[:, 1:], 0).astype(np.int32),
        'positions': np.where(valid_BxL, np.arange(length)[None], 0).astype(np.int32),
        'segment_ids': valid_BxL.astype(np.int32),
        'loss_weights': valid_BxL.astype(np.float32),
    }


def encoder_decoder_batch(
    rng: np.random.Generator, batch: int, enc_len: int, dec_len: int, vocab: int
) -> dict:
    """The t5x feature names; the target continues the encoder's run of ids."""
    enc_BxS = _runs(rng, batch, enc_len + dec_len + 1, vocab)
    enc_valid_BxS = np.arange(enc_len)[None] < _lengths(rng, batch, enc_len)
    dec_valid_BxT = np.arange(dec_len)[None] < _lengths(rng, batch, dec_len)
    targets_BxT = enc_BxS[:, enc_len + 1 :]
    inputs_BxT = np.concatenate([np.zeros((batch, 1), np.int64), targets_BxT[:, :-1]], axis=1)
    return {
        'encoder_input_tokens': np.where(enc_valid_BxS, enc_BxS[:, :enc_len], 0).astype(np.int32),
        'encoder_segment_ids': enc_valid_BxS.astype(np.int32),
        'encoder_positions': np.where(enc_valid_BxS, np.arange(enc_len)[None], 0).astype(np.int32),
        'decoder_input_tokens': np.where(dec_valid_BxT, inputs_BxT, 0).astype(np.int32),
        'decoder_target_tokens': np.where(dec_valid_BxT, targets_BxT, 0).astype(np.int32),
        'decoder_segment_ids': dec_valid_BxT.astype(np.int32),
        'decoder_positions': np.where(dec_valid_BxT, np.arange(dec_len)[None], 0).astype(np.int32),
        'decoder_loss_weights': dec_valid_BxT.astype(np.float32),
    }


def make_iterator(
    model_kind: str,
    vocab_size: int,
    seq_lens: Mapping[str, int],
    batch_size: int,
    *,
    seed: int,
    process_index: int = 0,
    num_batches: int | None = None,
) -> grain.DatasetIterator:
    """A `grain.DatasetIterator` of per-process batches (`get_state` / `set_state` resume).

    Args:
      model_kind: 'decoder' or 'encoder_decoder'.
      seq_lens: {'input': L} or {'encoder': S, 'decoder': T}.
      batch_size: rows per process (B); process p yields global rows [p * B, (p + 1) * B).
      num_batches: None = endless.
    """

    def row(i: int, global_row: int) -> dict:
        rng = np.random.default_rng([seed, i, global_row])
        if model_kind == 'decoder':
            return decoder_batch(rng, 1, seq_lens['input'], vocab_size)
        return encoder_decoder_batch(rng, 1, seq_lens['encoder'], seq_lens['decoder'], vocab_size)

    def make(i: int) -> dict:
        first = process_index * batch_size
        rows = [row(i, first + r) for r in range(batch_size)]
        return {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}

    n = num_batches if num_batches is not None else 2**31 - 1
    return iter(grain.MapDataset.range(n).map(make).to_iter_dataset())
