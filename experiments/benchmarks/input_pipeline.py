r"""Input-pipeline throughput: packed LM tokens per second vs. the demo model's training speed.

    python -m experiments.benchmarks.input_pipeline                # uses artifacts/ if built
    python -m experiments.benchmarks.input_pipeline --num_workers=2 --seq_len=1024

Reads `--data_dir` / `--tokenizer` when they exist, else builds a small tokenizer and corpus
into a temp dir first (not timed). Times `--num_batches` batches after `--warmup` batches and
prints ONE JSON line: `packed_tokens_per_s` (all positions of the packed rows, per second),
`packing_efficiency` (non-pad fraction) per task, and `ratio_to_demo_training` = pipeline
tokens/s ÷ the demo model's training tokens/s (target ≥ 10).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

from absl import app, flags

from codellm_jax.data import pipeline, preprocessing, tfds_builders, tokenizer

# Until the trainer reports its own number, the demo model's training speed is taken as this.
DEMO_TRAINING_TOKENS_PER_S = 1500.0
DEMO_TRAINING_SOURCE = 'stated figure (1500 tokens/s) until the demo training run reports its own'

_DATA_DIR = flags.DEFINE_string('data_dir', 'artifacts/tensorflow_datasets', 'tfds data dir.')
_TOKENIZER = flags.DEFINE_string('tokenizer', 'artifacts/tokenizer/code8k', 'Tokenizer dir.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 512, 'Packed sequence length.')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Per-process batch size.')
_NUM_BATCHES = flags.DEFINE_integer('num_batches', 100, 'Timed batches.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed batches first.')
_WORKERS = flags.DEFINE_integer('num_workers', 0, 'grain multiprocess prefetch workers.')
_DEMO_TPS = flags.DEFINE_float(
    'demo_training_tokens_per_s', DEMO_TRAINING_TOKENS_PER_S, 'Demo training speed to compare.'
)


def _ensure_inputs(tmp: str) -> tuple[str, str]:
    """(data_dir, tokenizer dir): the given ones when present, else small ones built in tmp."""
    data_dir, tok_dir = _DATA_DIR.value, _TOKENIZER.value
    have_data = all(
        os.path.isdir(os.path.join(data_dir, n, tfds_builders.VERSION))
        for n in ('code_corpus', 'instructions')
    )
    if not os.path.isdir(tok_dir):
        from codellm_jax.data import corpus

        files, _ = corpus.scan(max_bytes=4 << 20)
        tok_dir = os.path.join(tmp, 'tok')
        tokenizer.train_tokenizer([f.text for f in files], tok_dir, vocab_size=8192)
    if not have_data:
        data_dir = os.path.join(tmp, 'tfds')
        tfds_builders.build('code_corpus', data_dir, max_bytes=8 << 20)
        tfds_builders.build('instructions', data_dir, max_bytes=8 << 20)
    return data_dir, tok_dir


def _time(cfg, tok) -> tuple[float, float]:
    """(packed tokens/s, packing efficiency) of `cfg` over the timed batches."""
    it = pipeline.make_iterator(
        cfg, tok, split='train', seq_len=_SEQ_LEN.value, batch_size=_BATCH.value, seed=0
    )
    for _ in range(_WARMUP.value):
        next(it)
    seg_key = 'segment_ids' if cfg.task in pipeline.DECODER_TASKS else 'encoder_segment_ids'
    tokens, real = 0, 0.0
    start = time.perf_counter()
    for _ in range(_NUM_BATCHES.value):
        batch = next(it)
        tokens += batch[seg_key].size
        real += preprocessing.packing_efficiency(batch[seg_key]) * batch[seg_key].size
    seconds = time.perf_counter() - start
    if hasattr(it, 'close'):
        it.close()
    return tokens / seconds, real / tokens


def main(argv):
    del argv
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, tok_dir = _ensure_inputs(tmp)
        tok = tokenizer.load_tokenizer(tok_dir)
        base = pipeline.DataConfig(
            data_dir=data_dir, tokenizer_path=tok_dir, num_workers=_WORKERS.value
        )
        lm_tps, lm_eff = _time(base, tok)
        _, sft_eff = _time(dataclasses.replace(base, task='sft', dataset='instructions'), tok)
        _, span_eff = _time(dataclasses.replace(base, task='span_corruption'), tok)
        long_docs = pipeline.length_stats(
            base, tok, split='train', seq_len=_SEQ_LEN.value, max_records=500
        )
    print(
        json.dumps(
            {
                'packed_tokens_per_s': round(lm_tps, 1),
                'ratio_to_demo_training': round(lm_tps / _DEMO_TPS.value, 2),
                'demo_training_tokens_per_s': _DEMO_TPS.value,
                'demo_training_tokens_per_s_source': DEMO_TRAINING_SOURCE,
                'task': 'lm',
                'seq_len': _SEQ_LEN.value,
                'batch_size': _BATCH.value,
                'num_workers': _WORKERS.value,
                'packing_efficiency': {
                    'lm': round(lm_eff, 4),
                    'sft': round(sft_eff, 4),
                    'span_corruption_encoder': round(span_eff, 4),
                },
                'documents_longer_than_seq_len': long_docs,
                'vocab_size': tok.vocab_size,
                'cpu_count': os.cpu_count(),
            }
        )
    )


if __name__ == '__main__':
    app.run(main)
