"""Source-file discovery: directories and zip archives → filtered, deduplicated code files.

The default corpus is what every machine has without a download: the standard library of the
running Python interpreter, plus the JDK sources (`lib/src.zip`) where the installed JDK ships
them (some packages leave `src.zip` a dangling link; then Java is simply absent).

Files are read in a deterministic order (sorted paths, sources interleaved round-robin so a cap
keeps a mix of languages), decoded as UTF-8 (binary and non-UTF-8 files are skipped and counted),
deduplicated by the SHA-256 of their content and split train/validation by that hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sysconfig
import zipfile
from collections.abc import Iterator, Sequence

EXTENSIONS = {
    '.py': 'python',
    '.java': 'java',
    '.c': 'c',
    '.h': 'c',
    '.cc': 'cpp',
    '.cpp': 'cpp',
    '.hpp': 'cpp',
    '.js': 'javascript',
    '.ts': 'typescript',
    '.go': 'go',
    '.rs': 'rust',
    '.sh': 'shell',
}
DEFAULT_LANGUAGES = ('python', 'java')
SKIP_DIRS = frozenset({'site-packages', 'dist-packages', '__pycache__', '.git', 'node_modules'})


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One deduplicated source file. `sha256` is of the UTF-8 bytes; `size` in bytes."""

    path: str
    language: str
    text: str
    sha256: str
    size: int


@dataclasses.dataclass
class CorpusStats:
    """Counts of what a scan kept and skipped (a plain record, returned, never global)."""

    files_seen: int = 0
    files_kept: int = 0
    bytes_kept: int = 0
    skipped_not_utf8: int = 0
    skipped_binary: int = 0
    skipped_duplicate: int = 0
    skipped_too_large: int = 0
    skipped_empty: int = 0


def default_sources() -> list[str]:
    """The Python stdlib directory, plus the JDK's `lib/src.zip` when it really exists."""
    sources = [sysconfig.get_paths()['stdlib']]
    src_zip = jdk_src_zip()
    if src_zip:
        sources.append(src_zip)
    return sources


def jdk_src_zip() -> str | None:
    """Path of the installed JDK's `lib/src.zip`, or None (no JDK, or sources not shipped)."""
    candidates = []
    if os.environ.get('JAVA_HOME'):
        candidates.append(os.path.join(os.environ['JAVA_HOME'], 'lib', 'src.zip'))
    java = shutil.which('java')
    if java:
        home = os.path.dirname(os.path.dirname(os.path.realpath(java)))
        candidates.append(os.path.join(home, 'lib', 'src.zip'))
    for c in candidates:
        if os.path.isfile(c) and zipfile.is_zipfile(c):
            return c
    return None


def language_of(path: str) -> str | None:
    """The language of a file by its extension, or None if not a known source file."""
    return EXTENSIONS.get(os.path.splitext(path)[1].lower())


def split_of(sha256: str, validation_percent: float) -> str:
    """'validation' for a deterministic `validation_percent`% of hashes, else 'train'."""
    return 'validation' if int(sha256[:8], 16) % 10000 < validation_percent * 100 else 'train'


def decode_source(data: bytes) -> tuple[str | None, str]:
    """UTF-8 text of a file, or (None, reason) with reason 'binary' or 'not_utf8'."""
    if b'\x00' in data[:8192]:
        return None, 'binary'
    try:
        return data.decode('utf-8'), 'ok'
    except UnicodeDecodeError:
        return None, 'not_utf8'


def _iter_directory(root: str) -> Iterator[tuple[str, callable]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                yield path, _file_reader(path)


def _file_reader(path: str):
    def read() -> bytes:
        with open(path, 'rb') as f:
            return f.read()

    return read


def _iter_zip(path: str) -> Iterator[tuple[str, callable]]:
    with zipfile.ZipFile(path) as zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if not info.is_dir():
                yield f'{path}!{info.filename}', (lambda name=info.filename: zf.read(name))


def _iter_source(source: str) -> Iterator[tuple[str, callable]]:
    if os.path.isdir(source):
        yield from _iter_directory(source)
    elif os.path.isfile(source) and zipfile.is_zipfile(source):
        yield from _iter_zip(source)
    elif os.path.isfile(source):
        yield source, _file_reader(source)
    else:
        raise FileNotFoundError(
            f'Corpus source {source!r} does not exist (expected a directory, a zip archive or a '
            'file). Pass existing paths, e.g. --inputs=/path/to/repo,/path/to/src.zip.'
        )


def _round_robin(iterators: list[Iterator]) -> Iterator:
    live = list(iterators)
    while live:
        for it in list(live):
            try:
                yield next(it)
            except StopIteration:
                live.remove(it)


def scan(
    sources: Sequence[str] | None = None,
    *,
    languages: Sequence[str] = DEFAULT_LANGUAGES,
    max_files: int | None = None,
    max_bytes: int | None = None,
    max_file_bytes: int = 1 << 20,
) -> tuple[list[SourceFile], CorpusStats]:
    """Reads, filters and deduplicates the source files of `sources`.

    Args:
      sources: directories, zip archives or files; None = `default_sources()`.
      languages: languages to keep (see `EXTENSIONS`); empty = all known.
      max_files, max_bytes: stop once this many files / UTF-8 bytes are kept (None = no cap).
      max_file_bytes: skip files larger than this (generated code, data dumps).

    Returns:
      (files in deterministic order, stats). Raises FileNotFoundError for a missing source and
      ValueError when nothing is left (naming the sources, languages and skip counts).
    """
    sources = list(default_sources() if sources is None else sources)
    for s in sources:
        if not os.path.exists(s):
            raise FileNotFoundError(
                f'Corpus source {s!r} does not exist. Pass existing directories or zip archives.'
            )
    keep = set(languages) if languages else set(EXTENSIONS.values())
    stats, seen, out = CorpusStats(), set(), []
    for path, read in _round_robin([_iter_source(s) for s in sources]):
        lang = language_of(path)
        if lang is None or lang not in keep:
            continue
        stats.files_seen += 1
        data = read()
        if len(data) > max_file_bytes:
            stats.skipped_too_large += 1
            continue
        if not data.strip():
            stats.skipped_empty += 1
            continue
        text, why = decode_source(data)
        if text is None:
            setattr(stats, f'skipped_{why}', getattr(stats, f'skipped_{why}') + 1)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            stats.skipped_duplicate += 1
            continue
        seen.add(digest)
        out.append(SourceFile(path=path, language=lang, text=text, sha256=digest, size=len(data)))
        stats.files_kept += 1
        stats.bytes_kept += len(data)
        if (max_files and stats.files_kept >= max_files) or (
            max_bytes and stats.bytes_kept >= max_bytes
        ):
            break
    if not out:
        raise ValueError(
            f'Empty corpus: no {sorted(keep)} source files in {sources} ({stats}). Check the '
            'paths and --languages.'
        )
    return out, stats
