r"""Trains the code tokenizer on the train split of a corpus.

Default (Python stdlib + JDK sources when shipped, capped for speed; ~10-20 s on 2 cores):

    python -m codellm_jax.data.build_tokenizer --out=artifacts/tokenizer/code8k --vocab_size=8192

Writes `spm.model` and `special_tokens.json` into --out and prints one JSON line of stats.
Other corpora: `--inputs=/path/to/repo,/path/to/sources.zip --languages=python,java`.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from codellm_jax.data import corpus, tokenizer

_OUT = flags.DEFINE_string('out', 'artifacts/tokenizer/code8k', 'Output directory.')
_VOCAB = flags.DEFINE_integer('vocab_size', 8192, 'Vocabulary size (incl. special tokens).')
_INPUTS = flags.DEFINE_list('inputs', None, 'Directories / zip archives; default: stdlib + JDK.')
_LANGS = flags.DEFINE_list('languages', list(corpus.DEFAULT_LANGUAGES), 'Languages to keep.')
_MAX_FILES = flags.DEFINE_integer('max_files', 0, 'Cap on corpus files (0 = none).')
_MAX_BYTES = flags.DEFINE_integer('max_bytes', 16 << 20, 'Cap on corpus bytes (0 = none).')
_VALID = flags.DEFINE_float('validation_percent', 5.0, 'Held-out percent (not trained on).')
_SENTINELS = flags.DEFINE_integer('num_sentinels', 100, 'Span-corruption sentinels.')


def main(argv):
    del argv
    start = time.time()
    files, stats = corpus.scan(
        _INPUTS.value,
        languages=_LANGS.value,
        max_files=_MAX_FILES.value or None,
        max_bytes=_MAX_BYTES.value or None,
    )
    train = [f.text for f in files if corpus.split_of(f.sha256, _VALID.value) == 'train']
    tok = tokenizer.train_tokenizer(
        train, _OUT.value, vocab_size=_VOCAB.value, num_sentinels=_SENTINELS.value
    )
    print(
        json.dumps(
            {
                'out': _OUT.value,
                'vocab_size': tok.vocab_size,
                'train_files': len(train),
                'corpus': vars(stats),
                'seconds': round(time.time() - start, 2),
            }
        )
    )


if __name__ == '__main__':
    app.run(main)
