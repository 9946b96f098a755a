r"""Builds the tfds datasets (ArrayRecord, no TensorFlow) into a data dir.

Default (all four datasets from the embedded corpus and the shared py2java set; capped for
speed, well under a minute on 2 cores):

    python -m codellm_jax.data.build_datasets --data_dir=artifacts/tensorflow_datasets

Your own data: `--inputs=/path/to/repo,/path/to/src.zip` for the corpus, and
`--instructions_jsonl=train=a.jsonl,validation=b.jsonl` (same for `--translation_jsonl`,
`--preferences_jsonl`). Prints one JSON line per dataset: split sizes, corpus stats, seconds.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from codellm_jax.data import corpus, derived, tfds_builders

_DATA_DIR = flags.DEFINE_string('data_dir', 'artifacts/tensorflow_datasets', 'tfds data dir.')
_DATASETS = flags.DEFINE_list('datasets', list(tfds_builders.NAMES), 'Datasets to build.')
_INPUTS = flags.DEFINE_list('inputs', None, 'Directories / zip archives; default: stdlib + JDK.')
_LANGS = flags.DEFINE_list('languages', list(corpus.DEFAULT_LANGUAGES), 'code_corpus languages.')
_MAX_FILES = flags.DEFINE_integer('max_files', 0, 'Cap on corpus files (0 = none).')
_MAX_BYTES = flags.DEFINE_integer('max_bytes', 16 << 20, 'Cap on corpus bytes (0 = none).')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples', 0, 'Cap on derived SFT/preference pairs.')
_VALID = flags.DEFINE_float('validation_percent', 5.0, 'Held-out percent, split by content hash.')
_INSTR = flags.DEFINE_list('instructions_jsonl', None, 'split=path,... SFT JSONL files.')
_TRANS = flags.DEFINE_list('translation_jsonl', None, 'split=path,... translation JSONL.')
_PREFS = flags.DEFINE_list('preferences_jsonl', None, 'split=path,... preference JSONL.')
_ROOT = flags.DEFINE_string('root', '.', 'Project root (py2java is read from ../shared/data).')


def _split_files(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if '=' not in item:
            raise app.UsageError(f'Expected split=path, got {item!r}.')
        split, path = item.split('=', 1)
        out[split] = path
    return out


def builder_kwargs(name: str) -> dict:
    """Constructor arguments for dataset `name` from the flags."""
    corpus_kw = dict(
        sources=_INPUTS.value,
        max_files=_MAX_FILES.value or None,
        max_bytes=_MAX_BYTES.value or None,
        validation_percent=_VALID.value,
    )
    if name == 'code_corpus':
        return dict(corpus_kw, languages=_LANGS.value)
    if name == 'code_translation':
        return dict(jsonl_files=_split_files(_TRANS.value), root=_ROOT.value)
    jsonl = _INSTR.value if name == 'instructions' else _PREFS.value
    return dict(
        corpus_kw, jsonl_files=_split_files(jsonl), max_examples=_MAX_EXAMPLES.value or None
    )


def main(argv):
    del argv
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    pairs = None  # documented functions, parsed once for instructions and preferences
    for name in _DATASETS.value:
        start = time.time()
        kwargs = builder_kwargs(name)
        if name in ('instructions', 'preferences') and not kwargs['jsonl_files']:
            if pairs is None:
                files, _ = corpus.scan(
                    kwargs['sources'],
                    languages=('python',),
                    max_files=kwargs['max_files'],
                    max_bytes=kwargs['max_bytes'],
                )
                pairs = list(derived.instructions_from_corpus(files, kwargs['max_examples']))
            kwargs['pairs'] = pairs
        builder = tfds_builders.build(name, _DATA_DIR.value, **kwargs)
        stats = getattr(builder, 'corpus_stats', None)
        print(
            json.dumps(
                {
                    'dataset': name,
                    'splits': {k: v.num_examples for k, v in builder.info.splits.items()},
                    'corpus': vars(stats) if stats else None,
                    'seconds': round(time.time() - start, 2),
                }
            )
        )


if __name__ == '__main__':
    app.run(main)
