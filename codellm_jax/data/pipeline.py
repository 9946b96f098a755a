"""Deterministic, resumable grain pipelines: tfds ArrayRecord → per-process numpy batches.

Usage by the trainer::

    tok = tokenizer.load_tokenizer(data_cfg.tokenizer_path)
    tokenizer.check_vocab(tok, model_cfg.vocab_size)
    it = pipeline.make_iterator(data_cfg, tok, split='train', seq_len=512, batch_size=8,
                                seed=0, process_index=jax.process_index(),
                                process_count=jax.process_count())
    batch = next(it)                     # dict of numpy arrays, leading dim = per-process batch
    gbatch = pipeline.to_global_batch(batch, mesh, P(('data', 'fsdp')))
    state = it.get_state()               # plain JSON-serialisable dict; it.set_state(state)

Save the iterator beside the train state with orbax: ``grain.checkpoint.CheckpointSave(it)`` /
``grain.checkpoint.CheckpointRestore(it)`` under a `grain.checkpoint.CheckpointHandler` item
(it writes the state as JSON, one file per process).

Batch contract (fixed; pad id is 0 everywhere):
  decoder tasks ('lm', 'fim', 'sft'): `input_tokens`, `target_tokens`, `positions`,
    `segment_ids` [B, L] int32 and `loss_weights` [B, L] float32. Targets are inputs shifted by
    one *within* each packed segment; positions restart at 0 per segment; segment ids are 1, 2,
    ... per packed document and 0 on padding.
  encoder-decoder tasks ('span_corruption', 'seq2seq'): `encoder_input_tokens`,
    `encoder_segment_ids`, `encoder_positions` [B, Le] int32; `decoder_input_tokens`,
    `decoder_target_tokens`, `decoder_segment_ids`, `decoder_positions` [B, Ld] int32;
    `decoder_loss_weights` [B, Ld] float32. Decoder inputs are targets shifted right with 0
    (the decoder start id) at the start of each segment.

Long examples: 'lm', 'fim' and 'span_corruption' documents longer than a row continue on the
next row (nothing is lost); 'sft' and 'seq2seq' examples are truncated to L (prompt/response
pairs lose the prompt's start first, then the response's end; chats and seq2seq sides lose
their end, keeping the final eos for seq2seq); `length_stats` counts them.

Packing: concat-then-split for 'lm'/'fim' (no padding), first-fit over `num_packing_bins`
bins for 'sft'/'seq2seq', and for 'span_corruption' raw chunks sized by T5's rule so the
corrupted input fills the encoder row (at most one example's padding per row).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from codellm_jax.data import preprocessing, record_fns

TASKS = ('lm', 'fim', 'sft', 'span_corruption', 'seq2seq')
DECODER_TASKS = ('lm', 'fim', 'sft')


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What to read and how to turn it into batches (built from `cfg.data` by `to_dataclass`).

    Attributes:
      task: 'lm' (causal LM), 'fim' (causal LM with fill-in-the-middle), 'sft' (prompt/response
        with loss on the response only), 'span_corruption' (T5 denoising, encoder-decoder),
        'seq2seq' (inputs → targets, encoder-decoder: translation or SFT pairs).
      dataset: tfds builder name in `data_dir`: 'code_corpus', 'instructions',
        'code_translation' or 'preferences'.
      data_dir: tfds data dir (ArrayRecord files written by `build_datasets`).
      tokenizer_path: directory given to `tokenizer.load_tokenizer`.
      languages: keep only these languages of `code_corpus` (empty = all).
      translation_direction: for 'code_translation', '' = as stored (source → target), or
        'python->java' style to keep / flip pairs to this direction.
      encoder_seq_len: encoder length Le for encoder-decoder tasks; 0 = `seq_len`.
      decoder_seq_len: decoder length Ld; 0 = `seq_len` for 'seq2seq', and for
        'span_corruption' the length implied by the noise settings (T5: 512 → 114).
      fim_rate: fraction of documents turned into fill-in-the-middle examples.
      fim_spm_rate: among those, the fraction in SPM order (the rest are PSM).
      noise_density: span corruption: fraction of tokens masked.
      mean_noise_span_length: span corruption: mean length of a masked span.
      shuffle: shuffle examples (reshuffled deterministically every epoch).
      row_shuffle_window: after packing, shuffle rows within windows of this many (0 = off).
        Concat-then-split puts a long document on consecutive rows, so without it one file
        can fill whole batches (the train loss then jumps from batch to batch).
      num_packing_bins: bins of the first-fit packer used for 'sft' / 'seq2seq'.
      num_workers: grain multiprocess prefetch workers; 0 = read in the calling process. With
        workers, each packs its own slice of the records, so the stream differs from (but is
        as deterministic and resumable as) the stream without workers.
      read_threads, read_buffer: threads and look-ahead (in documents) that read and tokenize.
      add_bos: prepend bos to each decoder document.
    """

    task: str = 'lm'
    dataset: str = 'code_corpus'
    data_dir: str = 'artifacts/tensorflow_datasets'
    tokenizer_path: str = 'artifacts/tokenizer/code8k'
    languages: tuple[str, ...] = ()
    translation_direction: str = ''
    encoder_seq_len: int = 0
    decoder_seq_len: int = 0
    fim_rate: float = 0.5
    fim_spm_rate: float = 0.5
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    shuffle: bool = True
    row_shuffle_window: int = 0
    num_packing_bins: int = 16
    num_workers: int = 0
    read_threads: int = 2
    read_buffer: int = 32
    add_bos: bool = False

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f'DataConfig.task={self.task!r}; expected one of {TASKS}.')
        if not 0.0 <= self.fim_rate <= 1.0 or not 0.0 <= self.fim_spm_rate <= 1.0:
            raise ValueError('DataConfig.fim_rate and fim_spm_rate must lie in [0, 1].')
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f'DataConfig.noise_density={self.noise_density} must be in (0, 1).')
        if self.row_shuffle_window < 0:
            raise ValueError(
                f'DataConfig.row_shuffle_window={self.row_shuffle_window} must be >= 0 (0 = off).'
            )


def make_iterator(
    data_cfg: DataConfig,
    tokenizer: Any,
    *,
    split: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    num_epochs: int | None = None,
):
    """A grain iterator over this process's per-process batches (see the module docstring).

    Args:
      data_cfg: what to read and which task to build.
      tokenizer: a `tokenizer.Tokenizer` (must be picklable when `num_workers > 0`).
      split: 'train' or 'validation'.
      seq_len: L for decoder tasks; default encoder/decoder length for encoder-decoder tasks.
      batch_size: per-process batch size B (global batch = B * process_count).
      seed: same seed → same batches; each epoch is reshuffled from it.
      process_index, process_count: this process reads records `process_index::process_count`.
      num_epochs: None = repeat forever; else stop after that many passes (last batch dropped
        if incomplete).

    Returns:
      A `grain.DatasetIterator` yielding dicts of numpy arrays; `get_state()` returns a
      JSON-serialisable dict and `set_state(state)` continues with exactly the next batch.
    """
    import grain  # imported here: building a config must not pay for grain / tfds

    from codellm_jax.data import json_state, tfds_builders

    _check_task_dataset(data_cfg)
    if seq_len <= 0 or batch_size <= 0:
        raise ValueError(f'seq_len={seq_len} and batch_size={batch_size} must be positive.')
    lengths = sequence_lengths(data_cfg, seq_len)
    src = tfds_builders.data_source(data_cfg.data_dir, data_cfg.dataset, split)
    ds = _records(src, data_cfg, seed, process_index, process_count, num_epochs)
    example_fn = record_fns.example_fn(data_cfg, tokenizer, lengths)
    ds = ds.random_map(example_fn, seed=seed)
    read = grain.ReadOptions(
        num_threads=data_cfg.read_threads, prefetch_buffer_size=data_cfg.read_buffer
    )
    it = _pack(ds.to_iter_dataset(read), data_cfg, tokenizer, lengths, seed)
    if data_cfg.row_shuffle_window > 1:
        it = grain.experimental.WindowShuffleIterDataset(
            it, window_size=data_cfg.row_shuffle_window, seed=seed
        )
    it = it.batch(batch_size, drop_remainder=True)
    is_decoder = data_cfg.task in DECODER_TASKS
    it = it.map(record_fns.finalize_decoder if is_decoder else record_fns.finalize_encdec)
    if data_cfg.num_workers > 0:
        _mark_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_cfg.num_workers))
    return json_state.JsonStateIterator(iter(it))


def length_stats(
    data_cfg: DataConfig,
    tokenizer: Any,
    *,
    split: str,
    seq_len: int,
    max_records: int | None = None,
) -> dict[str, Any]:
    """Counts the examples longer than the sequence length, and what the pipeline does to them.

    Returns {'records', 'too_long', 'action', 'tokens'}: 'lm'/'fim'/'span_corruption' documents
    longer than one row are split over rows ('split'); 'sft'/'seq2seq' examples are cut
    ('truncated', see the module docstring).
    """
    from codellm_jax.data import tfds_builders

    lengths = sequence_lengths(data_cfg, seq_len)
    src = tfds_builders.data_source(data_cfg.data_dir, data_cfg.dataset, split)
    n = len(src) if max_records is None else min(len(src), max_records)
    fn = record_fns.example_fn(data_cfg, tokenizer, lengths)
    too_long = tokens = 0
    for i in range(n):
        if data_cfg.task in ('sft', 'seq2seq'):
            example, truncated = fn(src[i], None, with_flag=True)
            too_long += truncated
            tokens += sum(len(v) for k, v in example.items() if k.endswith('target_tokens'))
        else:
            count = len(tokenizer.encode(record_fns.document_text(src[i])))
            too_long += count + 1 > lengths.get('input', lengths.get('encoder'))
            tokens += count
    action = 'truncated' if data_cfg.task in ('sft', 'seq2seq') else 'split'
    return {'records': n, 'too_long': int(too_long), 'action': action, 'tokens': int(tokens)}


def make_lm_iterator(data_cfg: DataConfig, tokenizer: Any, **kwargs):
    """`make_iterator` with `task='lm'` (kwargs as there)."""
    return make_iterator(dataclasses.replace(data_cfg, task='lm'), tokenizer, **kwargs)


def make_sft_iterator(data_cfg: DataConfig, tokenizer: Any, **kwargs):
    """`make_iterator` with `task='sft'` ('code_corpus' is replaced by 'instructions')."""
    dataset = 'instructions' if data_cfg.dataset == 'code_corpus' else data_cfg.dataset
    cfg = dataclasses.replace(data_cfg, task='sft', dataset=dataset)
    return make_iterator(cfg, tokenizer, **kwargs)


def make_seq2seq_iterator(data_cfg: DataConfig, tokenizer: Any, **kwargs):
    """`make_iterator` with `task='seq2seq'` ('code_corpus' is replaced by 'code_translation')."""
    dataset = 'code_translation' if data_cfg.dataset == 'code_corpus' else data_cfg.dataset
    cfg = dataclasses.replace(data_cfg, task='seq2seq', dataset=dataset)
    return make_iterator(cfg, tokenizer, **kwargs)


def sequence_lengths(data_cfg: DataConfig, seq_len: int) -> dict[str, int]:
    """The lengths of each batch feature: {'input': L} or {'encoder': Le, 'decoder': Ld}."""
    if data_cfg.task in DECODER_TASKS:
        return {'input': seq_len}
    enc = data_cfg.encoder_seq_len or seq_len
    dec = data_cfg.decoder_seq_len
    if not dec and data_cfg.task == 'span_corruption':
        _, dec = preprocessing.span_corruption_lengths(
            enc, data_cfg.noise_density, data_cfg.mean_noise_span_length
        )
    return {'encoder': enc, 'decoder': dec or seq_len}


def batch_spec(data_cfg: DataConfig, *, seq_len: int, batch_size: int) -> dict[str, tuple]:
    """Feature name → (shape, numpy dtype) of one batch: for abstract init before any data."""
    lengths = sequence_lengths(data_cfg, seq_len)
    if data_cfg.task in DECODER_TASKS:
        shape = (batch_size, lengths['input'])
        spec = {k: (shape, np.int32) for k in DECODER_INT_FEATURES}
        spec['loss_weights'] = (shape, np.float32)
        return spec
    enc = (batch_size, lengths['encoder'])
    dec = (batch_size, lengths['decoder'])
    spec = {k: (enc, np.int32) for k in ENCODER_INT_FEATURES}
    spec.update({k: (dec, np.int32) for k in DECODER_SIDE_INT_FEATURES})
    spec['decoder_loss_weights'] = (dec, np.float32)
    return spec


DECODER_INT_FEATURES = ('input_tokens', 'target_tokens', 'positions', 'segment_ids')
ENCODER_INT_FEATURES = ('encoder_input_tokens', 'encoder_segment_ids', 'encoder_positions')
DECODER_SIDE_INT_FEATURES = (
    'decoder_input_tokens',
    'decoder_target_tokens',
    'decoder_segment_ids',
    'decoder_positions',
)


def to_global_batch(batch: Mapping[str, np.ndarray], mesh, batch_partition_spec) -> dict:
    """Assembles per-process batches into global `jax.Array`s sharded over the mesh.

    Args:
      batch: this process's batch, each array [B_local, ...].
      mesh: the `jax.sharding.Mesh`.
      batch_partition_spec: `PartitionSpec` of a [B, L] feature, e.g. `P(('data', 'fsdp'))`;
        trailing dims not named are replicated.

    Returns:
      Dict of global arrays [B_local * process_count, ...] with `NamedSharding(mesh, spec)`.
    """
    import jax

    sharding = jax.sharding.NamedSharding(mesh, batch_partition_spec)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------
# Building blocks of `make_iterator` (module-level so that they pickle for multiprocessing).


TASK_DATASETS = {
    'lm': ('code_corpus',),
    'fim': ('code_corpus',),
    'span_corruption': ('code_corpus',),
    'sft': ('instructions', 'code_translation'),
    'seq2seq': ('code_translation', 'instructions'),
}


def _check_task_dataset(data_cfg: DataConfig) -> None:
    if data_cfg.dataset not in TASK_DATASETS[data_cfg.task]:
        raise ValueError(
            f'DataConfig.task={data_cfg.task!r} cannot read dataset {data_cfg.dataset!r}; '
            f'use one of {TASK_DATASETS[data_cfg.task]}.'
        )


def _mark_absl_flags_parsed() -> None:
    """grain's multiprocess prefetch reads absl flags; outside an absl app mark them parsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _records(src, data_cfg: DataConfig, seed, process_index, process_count, num_epochs):
    """This process's records: an equal slice per process, shuffled anew every epoch."""
    import grain

    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index={process_index} not in [0, {process_count}).')
    n = len(src) - len(src) % process_count  # equal shards keep processes in lockstep
    if n == 0:
        raise ValueError(
            f'Dataset {data_cfg.dataset!r} has {len(src)} records, fewer than the '
            f'{process_count} processes; build a larger dataset.'
        )
    ds = grain.MapDataset.source(src)[process_index:n:process_count]
    if data_cfg.shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    if data_cfg.languages:
        ds = ds.filter(functools.partial(_has_language, languages=data_cfg.languages))
    return ds


def _has_language(record, languages) -> bool:
    return record_fns.text(record['language']) in languages


_DECODER_PACKED = ('decoder_input_tokens', 'decoder_target_tokens', 'decoder_loss_weights')


def _pack(it, data_cfg: DataConfig, tok, lengths, seed):
    """Packs examples into rows: concat-then-split for LM/FIM (long documents continue on the
    next row), first-fit for SFT/seq2seq (examples stay whole), span corruption on
    concatenated raw chunks sized to fill the encoder exactly."""
    import grain

    if data_cfg.task in ('lm', 'fim'):
        n = lengths['input']
        return grain.experimental.ConcatThenSplitIterDataset(
            it, length_struct={'input_tokens': n, 'target_tokens': n, 'loss_weights': n}
        )
    if data_cfg.task == 'sft':
        n = lengths['input']
        struct = {'input_tokens': n, 'target_tokens': n, 'loss_weights': n}
    elif data_cfg.task == 'seq2seq':
        struct = {'encoder_input_tokens': lengths['encoder']}
        struct.update({k: lengths['decoder'] for k in _DECODER_PACKED})
    else:
        raw_len, _ = preprocessing.span_corruption_lengths(
            lengths['encoder'], data_cfg.noise_density, data_cfg.mean_noise_span_length
        )
        it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct={'tokens': raw_len})
        corrupt = functools.partial(
            record_fns.span_corrupt, special=tok.special, cfg=data_cfg, lengths=lengths
        )
        return it.random_map(corrupt, seed=seed)
    return grain.experimental.FirstFitPackIterDataset(
        it, length_struct=struct, num_packing_bins=data_cfg.num_packing_bins, seed=seed
    )
