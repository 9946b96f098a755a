"""tensorflow-datasets builders writing ArrayRecord, and their readers — no TensorFlow needed.

Builders: `code_corpus` (source files), `instructions` (SFT), `code_translation`, `preferences`.
Each takes its inputs as constructor arguments and writes `file_format='array_record'` under
`data_dir/<name>/<version>`; `data_source(data_dir, name, split)` reads one split back for grain
(random access; text features come back as bytes).

No-TF notes (tfds 4.9.10): `GeneratorBasedBuilder.download_and_prepare` + ArrayRecord writing
and `builder_from_directory(...).as_data_source()` work without TensorFlow; `tfds.load` /
`as_numpy` need it, and `dataset_info_from_configs` fails for a builder outside a package
directory (it looks for a metadata dir beside the module), so `_info` builds `DatasetInfo`
directly.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from codellm_jax.data import corpus, derived, jsonl

VERSION = '1.0.0'
NAMES = ('code_corpus', 'instructions', 'code_translation', 'preferences')


def _text_features(*names: str, **others) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({**{n: tfds.features.Text() for n in names}, **others})


def _splits(name: str, records_by_split: dict[str, list], make_generator) -> dict:
    """Split generators for the non-empty splits (tfds refuses to write an empty split)."""
    out = {k: make_generator(v, k) for k, v in records_by_split.items() if v}
    if not out:
        raise ValueError(f'Dataset {name!r}: no examples in any split; check the inputs.')
    return out


class _OutsidePackage:
    """Mixin: no `code_path`, so tfds looks for no checksums/metadata beside this module.

    (tfds's own lookup needs the `importlib_resources` backport for a package that is not
    installed; our builders download nothing, so there is nothing to find.)
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        return None


class _CorpusArgs(_OutsidePackage):
    """Corpus arguments shared by builders that read source files."""

    def _init_corpus(self, sources, languages, max_files, max_bytes, validation_percent):
        self._sources = None if sources is None else tuple(sources)
        self._languages = tuple(languages)
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._validation_percent = validation_percent
        self.corpus_stats = None

    def _scan(self):
        files, self.corpus_stats = corpus.scan(
            self._sources,
            languages=self._languages,
            max_files=self._max_files,
            max_bytes=self._max_bytes,
        )
        return files

    def _derive(self) -> list:
        """(file, instruction pair) of the corpus's documented Python functions."""
        return list(derived.instructions_from_corpus(self._scan(), self._max_examples))

    def _split(self, f: corpus.SourceFile) -> str:
        return corpus.split_of(f.sha256, self._validation_percent)


class _JsonlOrDerivedArgs(_CorpusArgs):
    """Builder args of datasets read from JSONL files or derived from the Python corpus."""

    def __init__(
        self,
        *,
        jsonl_files: dict[str, str] | None = None,
        sources: Sequence[str] | None = None,
        max_files: int | None = None,
        max_bytes: int | None = None,
        max_examples: int | None = None,
        pairs: list | None = None,
        validation_percent: float = 5.0,
        **kwargs,
    ):
        self._jsonl_files = dict(jsonl_files or {})
        self._max_examples = max_examples
        self._pairs = pairs
        self._init_corpus(sources, ('python',), max_files, max_bytes, validation_percent)
        super().__init__(**kwargs)


class CodeCorpus(_CorpusArgs, tfds.core.GeneratorBasedBuilder):
    """Source files from directories / zip archives: path, language, size, sha256, content."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(
        self,
        *,
        sources: Sequence[str] | None = None,
        languages: Sequence[str] = corpus.DEFAULT_LANGUAGES,
        max_files: int | None = None,
        max_bytes: int | None = None,
        validation_percent: float = 5.0,
        **kwargs,
    ):
        self._init_corpus(sources, languages, max_files, max_bytes, validation_percent)
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description='Deduplicated source files (default: Python stdlib + JDK src.zip).',
            features=_text_features('path', 'language', 'sha256', 'content', size=np.int64),
        )

    def _split_generators(self, dl_manager):
        files = self._scan()
        by_split = {s: [f for f in files if self._split(f) == s] for s in ('train', 'validation')}
        return _splits(self.name, by_split, self._generate_examples)

    def _generate_examples(self, files, split):
        del split
        for f in files:
            yield (
                f.sha256,
                {
                    'path': f.path,
                    'language': f.language,
                    'sha256': f.sha256,
                    'content': f.text,
                    'size': f.size,
                },
            )


class Instructions(_JsonlOrDerivedArgs, tfds.core.GeneratorBasedBuilder):
    """SFT data: prompt/response pairs or chats (`messages` as a JSON string, '' for pairs).

    From `jsonl_files` ({split: path}) when given, else derived from the corpus's Python
    functions (docstring → instruction, function → response), split with their source file;
    `pairs` (from `derived.instructions_from_corpus`) skips re-parsing the corpus.
    """

    VERSION = tfds.core.Version(VERSION)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description='Instruction data (prompt/response or chat messages).',
            features=_text_features('prompt', 'response', 'messages', 'source'),
        )

    def _split_generators(self, dl_manager):
        if self._jsonl_files:
            by_split = {
                s: [(path, r) for r in jsonl.read_instructions(path)]
                for s, path in self._jsonl_files.items()
            }
            return _splits(self.name, by_split, self._from_jsonl)
        pairs = self._pairs if self._pairs is not None else self._derive()
        by_split = {
            s: [(f, p) for f, p in pairs if self._split(f) == s] for s in ('train', 'validation')
        }
        return _splits(self.name, by_split, self._generate_examples)

    def _from_jsonl(self, records, split):
        for i, (path, r) in enumerate(records):
            yield f'{split}-{i}', {**r, 'source': f'{path}:{i + 1}'}

    def _generate_examples(self, pairs, split):
        del split
        for i, (f, p) in enumerate(pairs):
            yield (
                f'{f.sha256}-{i}',
                {
                    'prompt': p['prompt'],
                    'response': p['response'],
                    'messages': '',
                    'source': f'{f.path}:{p["name"]}',
                },
            )


class CodeTranslation(_OutsidePackage, tfds.core.GeneratorBasedBuilder):
    """Translation pairs. From `jsonl_files` ({split: path}), else HumanEval-X py2java read in
    place from `../shared/data/py2java` (train = the 10 few-shot tasks, validation = the 154
    evaluation tasks)."""

    VERSION = tfds.core.Version(VERSION)

    def __init__(self, *, jsonl_files: dict[str, str] | None = None, root: str = '.', **kwargs):
        self._jsonl_files = dict(jsonl_files or {})
        self._root = root
        super().__init__(**kwargs)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description='Code translation pairs (source_lang, source, target_lang, target).',
            features=_text_features('source_lang', 'source', 'target_lang', 'target', 'id'),
        )

    def _split_generators(self, dl_manager):
        if self._jsonl_files:
            by_split = {s: list(jsonl.read_translations(p)) for s, p in self._jsonl_files.items()}
        else:
            by_split = {
                'train': jsonl.load_py2java('fewshot', self._root),
                'validation': jsonl.load_py2java('eval', self._root),
            }
        return _splits(self.name, by_split, self._generate_examples)

    def _generate_examples(self, records, split):
        for i, r in enumerate(records):
            yield (
                f'{split}-{i}',
                {
                    'source_lang': r['source_lang'],
                    'source': r['source'],
                    'target_lang': r['target_lang'],
                    'target': r['target'],
                    'id': r.get('task_id', f'{split}-{i}'),
                },
            )


class Preferences(_JsonlOrDerivedArgs, tfds.core.GeneratorBasedBuilder):
    """(prompt, chosen, rejected). From `jsonl_files`, else derived from the corpus (see
    `derived.preferences_from_pairs`)."""

    VERSION = tfds.core.Version(VERSION)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description='Preference triples for alignment.',
            features=_text_features('prompt', 'chosen', 'rejected'),
        )

    def _split_generators(self, dl_manager):
        if self._jsonl_files:
            by_split = {s: list(jsonl.read_preferences(p)) for s, p in self._jsonl_files.items()}
            return _splits(self.name, by_split, self._generate_examples)
        pairs = self._pairs if self._pairs is not None else self._derive()
        by_split = {}
        for split in ('train', 'validation'):
            split_pairs = [p for f, p in pairs if self._split(f) == split]
            by_split[split] = list(derived.preferences_from_pairs(split_pairs))
        return _splits(self.name, by_split, self._generate_examples)

    def _generate_examples(self, records, split):
        for i, r in enumerate(records):
            yield f'{split}-{i}', r


BUILDERS = {
    'code_corpus': CodeCorpus,
    'instructions': Instructions,
    'code_translation': CodeTranslation,
    'preferences': Preferences,
}


def build(
    name: str, data_dir: str, *, overwrite: bool = True, **kwargs
) -> tfds.core.DatasetBuilder:
    """Builds dataset `name` into `data_dir` (ArrayRecord); kwargs go to the builder."""
    if name not in BUILDERS:
        raise ValueError(f'Unknown dataset {name!r}; expected one of {NAMES}.')
    out = os.path.join(data_dir, name, VERSION)
    if overwrite and os.path.exists(out):
        shutil.rmtree(out)
    builder = BUILDERS[name](data_dir=data_dir, file_format='array_record', **kwargs)
    builder.download_and_prepare()
    return builder


def dataset_dir(data_dir: str, name: str) -> str:
    """`data_dir/name/VERSION`, checked to exist (with the command to build it otherwise)."""
    path = os.path.join(data_dir, name, VERSION)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f'Dataset {name!r} not found in {data_dir!r} (no {path}). Build it with `python -m '
            f'codellm_jax.data.build_datasets --data_dir={data_dir} --datasets={name}`.'
        )
    return path


def data_source(data_dir: str, name: str, split: str):
    """Random-access source of one split (tfds ArrayRecord data source; no TensorFlow)."""
    builder = tfds.builder_from_directory(dataset_dir(data_dir, name))
    if split not in builder.info.splits:
        raise ValueError(
            f'Dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}.'
        )
    return builder.as_data_source(split=split)
