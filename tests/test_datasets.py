"""Corpus scanning, tfds builders (ArrayRecord, no TensorFlow), JSONL loaders, bad input."""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile

import pytest

from codellm_jax.data import corpus, derived, jsonl, tfds_builders

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FUNC = '''
def add(a, b):
    """Adds two numbers and returns their sum."""
    total = a + b
    return total
'''


@pytest.fixture()
def tree(tmp_path):
    """A small corpus: python/java files, a duplicate, non-UTF-8, binary, empty, a zip."""
    src = tmp_path / 'src'
    (src / 'pkg').mkdir(parents=True)
    (src / 'pkg' / 'a.py').write_text(FUNC)
    (src / 'pkg' / 'a_copy.py').write_text(FUNC)  # duplicate content
    (src / 'pkg' / 'b.py').write_text('x = "é"\n')
    (src / 'Main.java').write_text('class Main {}\n')
    (src / 'latin1.py').write_bytes('s = "café"\n'.encode('latin-1'))
    (src / 'blob.py').write_bytes(b'\x00\x01\x02binary')
    (src / 'empty.py').write_text('\n')
    (src / 'notes.txt').write_text('not code')
    (src / '__pycache__').mkdir()
    (src / '__pycache__' / 'c.py').write_text('skipped = 1\n')
    archive = tmp_path / 'more.zip'
    with zipfile.ZipFile(archive, 'w') as zf:
        zf.writestr('z/Util.java', 'class Util { int f() { return 1; } }\n')
        zf.writestr('z/dup.py', FUNC)
    return [str(src), str(archive)]


def test_scan_filters_dedups_and_counts(tree):
    files, stats = corpus.scan(tree, languages=('python', 'java'))
    names = sorted(os.path.basename(f.path) for f in files)
    # Round-robin over sources reaches the zip's dup.py before pkg/a.py: first copy wins.
    assert names == ['Main.java', 'Util.java', 'b.py', 'dup.py']
    assert stats.skipped_duplicate == 2 and stats.skipped_not_utf8 == 1
    assert stats.skipped_binary == 1 and stats.skipped_empty == 1
    zipped = [f for f in files if f.path.endswith('Util.java')][0]
    assert zipped.path.endswith('more.zip!z/Util.java') and zipped.language == 'java'
    b = [f for f in files if f.path.endswith('b.py')][0]
    assert b.size == len('x = "é"\n'.encode()) and b.text == 'x = "é"\n'
    only_java, _ = corpus.scan(tree, languages=('java',))
    assert {f.language for f in only_java} == {'java'}
    capped, _ = corpus.scan(tree, max_files=2)
    assert len(capped) == 2 and {f.path.endswith('.zip!z/Util.java') for f in capped} == {
        True,
        False,
    }  # round-robin over sources


def test_scan_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        corpus.scan([str(tmp_path / 'nope')])
    (tmp_path / 'readme.md').write_text('hi')
    with pytest.raises(ValueError, match='Empty corpus'):
        corpus.scan([str(tmp_path)])


def test_split_is_deterministic_by_hash():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(2000)]
    splits = [corpus.split_of(h, 5.0) for h in hashes]
    assert splits == [corpus.split_of(h, 5.0) for h in hashes]
    assert 0.03 < splits.count('validation') / len(splits) < 0.07


def test_default_sources_exist():
    sources = corpus.default_sources()
    assert os.path.isdir(sources[0]) and os.path.exists(os.path.join(sources[0], 'os.py'))
    for s in sources[1:]:
        assert zipfile.is_zipfile(s)


def test_code_corpus_builder_round_trip(tree, tmp_path):
    data_dir = str(tmp_path / 'tfds')
    b = tfds_builders.build('code_corpus', data_dir, sources=tree, validation_percent=50.0)
    assert b.corpus_stats.files_kept == 4
    got = []
    for split in ('train', 'validation'):
        src = tfds_builders.data_source(data_dir, 'code_corpus', split)
        for i in range(len(src)):
            r = src[i]
            assert corpus.split_of(r['sha256'].decode(), 50.0) == split
            got.append((r['path'].decode(), r['language'].decode(), r['size'], r['content']))
    files, _ = corpus.scan(tree)
    expected = [(f.path, f.language, f.size, f.text.encode()) for f in files]
    assert sorted(got) == sorted(expected)
    assert importlib.util.find_spec('tensorflow') is None  # built without TensorFlow
    with pytest.raises(ValueError, match='no split'):
        tfds_builders.data_source(data_dir, 'code_corpus', 'test')
    with pytest.raises(FileNotFoundError, match='build_datasets'):
        tfds_builders.data_source(data_dir, 'preferences', 'train')


def test_derived_instruction_pair():
    [pair] = list(derived.function_pairs(FUNC))
    assert 'Adds two numbers' in pair['prompt'] and 'def add(a, b):' in pair['prompt']
    assert pair['response'] == 'def add(a, b):\n    total = a + b\n    return total\n'
    assert list(derived.function_pairs('def broken(:\n')) == []


def test_instructions_and_preferences_from_corpus(tree, tmp_path):
    data_dir = str(tmp_path / 'tfds')
    extra = tmp_path / 'src2'
    extra.mkdir()
    (extra / 'm.py').write_text(
        FUNC.replace('add', 'sub').replace('+', '-').replace('Adds', 'Subs')
    )
    sources = tree + [str(extra)]
    tfds_builders.build('instructions', data_dir, sources=sources, validation_percent=0.0)
    src = tfds_builders.data_source(data_dir, 'instructions', 'train')
    assert len(src) == 2 and {src[i]['messages'] for i in range(2)} == {b''}
    tfds_builders.build('preferences', data_dir, sources=sources, validation_percent=0.0)
    prefs = tfds_builders.data_source(data_dir, 'preferences', 'train')
    r = prefs[0]
    assert (
        r['chosen'] != r['rejected']
        and r['chosen'].split(b'\n')[0] == r['rejected'].split(b'\n')[0]
    )


def test_instructions_from_jsonl_pairs_and_chats(tmp_path):
    path = tmp_path / 'sft.jsonl'
    chat = [{'role': 'user', 'content': 'hi'}, {'role': 'assistant', 'content': 'yo'}]
    path.write_text(
        json.dumps({'prompt': 'p', 'response': 'r'}) + '\n\n' + json.dumps({'messages': chat})
    )
    data_dir = str(tmp_path / 'tfds')
    tfds_builders.build('instructions', data_dir, jsonl_files={'train': str(path)})
    src = tfds_builders.data_source(data_dir, 'instructions', 'train')
    records = sorted((src[i]['prompt'], src[i]['messages']) for i in range(len(src)))
    assert records == [(b'', json.dumps(chat).encode()), (b'p', b'')]


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / 'bad.jsonl'
    path.write_text('{"prompt": "a", "response": "b"}\n\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r'bad.jsonl:3: malformed JSON'):
        list(jsonl.read_instructions(str(path)))
    path.write_text('{"source": "a"}\n')
    with pytest.raises(ValueError, match=r':1: missing field'):
        list(jsonl.read_translations(str(path)))
    path.write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match='expected "prompt"'):
        list(jsonl.read_instructions(str(path)))
    with pytest.raises(FileNotFoundError):
        list(jsonl.read_jsonl(str(tmp_path / 'missing.jsonl')))


def test_py2java_loader_and_translation_builder(tmp_path):
    fewshot = jsonl.load_py2java('fewshot', ROOT)
    evalset = jsonl.load_py2java('eval', ROOT)
    assert len(fewshot) == 10 and len(evalset) == 154
    assert {r['task_id'] for r in fewshot}.isdisjoint(r['task_id'] for r in evalset)
    assert 'class Solution' in evalset[0]['target'] and evalset[0]['source_lang'] == 'python'
    data_dir = str(tmp_path / 'tfds')
    tfds_builders.build('code_translation', data_dir, root=ROOT)
    src = tfds_builders.data_source(data_dir, 'code_translation', 'validation')
    assert len(src) == 154
    assert {src[i]['id'] for i in range(len(src))} == {r['task_id'].encode() for r in evalset}


def test_build_commands_run(tree, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    out = subprocess.run(
        [sys.executable, '-m', 'codellm_jax.data.build_datasets', f'--data_dir={tmp_path}/d',
         '--datasets=code_corpus,instructions', f'--inputs={",".join(tree)}'],
        capture_output=True, text=True, cwd=ROOT, env=env, check=True,
    )  # fmt: skip
    lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith('{')]
    assert [x['dataset'] for x in lines] == ['code_corpus', 'instructions']
    assert sum(lines[0]['splits'].values()) == 4 and lines[0]['corpus']['skipped_not_utf8'] == 1
