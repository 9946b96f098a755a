"""Read and write Hugging Face safetensors checkpoints with numpy only (no torch).

A checkpoint directory holds either one `model.safetensors`, or shards
`model-00001-of-0000N.safetensors` plus `model.safetensors.index.json`
(`{"metadata": {"total_size": bytes}, "weight_map": {tensor name: shard file}}`), the layout
`transformers.PreTrainedModel.save_pretrained` writes. bfloat16 tensors come back as
`ml_dtypes.bfloat16` numpy arrays.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3

_SIZE_UNITS = {
    'B': 1,
    'KB': 10**3,
    'MB': 10**6,
    'GB': 10**9,
    'KIB': 2**10,
    'MIB': 2**20,
    'GIB': 2**30,
}


def parse_size(size: str | int) -> int:
    """`'5GB'`, `'200MiB'`, `'50KB'` or a plain integer → a number of bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*', size)
    unit = m.group(2).upper() if m else ''
    if not m or (unit and unit not in _SIZE_UNITS):
        raise ValueError(
            f'Cannot parse size {size!r}; use an integer number of bytes or e.g. 50KB, 200MB, '
            f'5GB, 2GiB (units: {sorted(_SIZE_UNITS)}).'
        )
    return int(float(m.group(1)) * _SIZE_UNITS[unit or 'B'])


def checkpoint_files(directory: str) -> dict[str, str]:
    """Maps each tensor name to the safetensors file (full path) that holds it.

    Uses `model.safetensors.index.json` when present, else `model.safetensors`, else every
    `*.safetensors` file in the directory. Raises a clear error when there is none, when the
    index names a missing shard, or when two files hold the same tensor.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f'Checkpoint directory {directory!r} does not exist.')
    index_path = os.path.join(directory, INDEX_FILE)
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map = json.load(f).get('weight_map')
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f'{index_path} has no "weight_map" of tensor name → shard file.')
        missing = sorted({s for s in weight_map.values() if not _isfile(directory, s)})
        if missing:
            raise FileNotFoundError(
                f'{index_path} refers to shard file(s) {missing} that are not in {directory!r}; '
                'download every shard listed in the index.'
            )
        return {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
    if _isfile(directory, SINGLE_FILE):
        files = [SINGLE_FILE]
    else:
        files = sorted(f for f in os.listdir(directory) if f.endswith('.safetensors'))
    if not files:
        others = sorted(f for f in os.listdir(directory) if f.endswith(('.bin', '.pt', '.pth')))
        hint = (
            f' Found PyTorch pickles {others}: re-save them as safetensors, e.g. '
            '`AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)`.'
            if others
            else ''
        )
        raise FileNotFoundError(f'No *.safetensors file in {directory!r}.{hint}')
    out: dict[str, str] = {}
    for fname in files:
        path = os.path.join(directory, fname)
        with safe_open(path, framework='np') as f:
            for name in f.keys():
                if name in out:
                    raise ValueError(
                        f'Tensor {name!r} is in both {out[name]} and {path}; keep one copy or '
                        f'add a {INDEX_FILE}.'
                    )
                out[name] = path
    return out


def read_shapes(directory: str) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in the checkpoint, read from the headers only."""
    shapes = {}
    for path, names in _by_file(checkpoint_files(directory)).items():
        with safe_open(path, framework='np') as f:
            for name in names:
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


def read_tensors(directory: str) -> dict[str, np.ndarray]:
    """Loads every tensor of a (possibly sharded) safetensors checkpoint as numpy arrays."""
    tensors = {}
    for path, names in _by_file(checkpoint_files(directory)).items():
        with safe_open(path, framework='np') as f:
            present = set(f.keys())
            absent = sorted(set(names) - present)
            if absent:
                raise ValueError(f'{INDEX_FILE} places {absent} in {path}, which lacks them.')
            for name in names:
                tensors[name] = f.get_tensor(name)
    return tensors


def write_tensors(
    directory: str,
    tensors: Mapping[str, np.ndarray],
    max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
) -> list[str]:
    """Writes `tensors` as one `model.safetensors`, or as shards plus an index when their
    total size exceeds `max_shard_bytes`. Tensors keep their order; a tensor larger than
    `max_shard_bytes` gets a shard of its own. Returns the file names written.
    """
    max_shard_bytes = parse_size(max_shard_bytes)
    os.makedirs(directory, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    shards: list[dict[str, np.ndarray]] = [{}]
    shard_bytes = 0
    for name, array in arrays.items():
        if shards[-1] and shard_bytes + array.nbytes > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = array
        shard_bytes += array.nbytes
    for stale in (SINGLE_FILE, INDEX_FILE):
        if _isfile(directory, stale):
            os.remove(os.path.join(directory, stale))
    metadata = {'format': 'pt'}  # transformers refuses files without it.
    if len(shards) == 1:
        save_file(shards[0], os.path.join(directory, SINGLE_FILE), metadata=metadata)
        return [SINGLE_FILE]
    names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors' for i in range(len(shards))]
    weight_map = {}
    for fname, shard in zip(names, shards, strict=True):
        save_file(shard, os.path.join(directory, fname), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, fname))
    index = {
        'metadata': {'total_size': sum(a.nbytes for a in arrays.values())},
        'weight_map': weight_map,
    }
    with open(os.path.join(directory, INDEX_FILE), 'w') as f:
        json.dump(index, f, indent=2, sort_keys=True)
        f.write('\n')
    return [*names, INDEX_FILE]


def read_config(directory: str) -> dict:
    """The parsed `directory/config.json` of an HF checkpoint; a clear error when missing."""
    path = os.path.join(directory, 'config.json')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path} not found: --hf_dir must hold config.json.')
    with open(path) as f:
        return json.load(f)


def write_checkpoint(
    directory: str,
    tensors: Mapping[str, np.ndarray],
    config: Mapping,
    max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
) -> None:
    """Writes an HF checkpoint directory: safetensors (see `write_tensors`) + `config.json`."""
    write_tensors(directory, tensors, max_shard_bytes)
    with open(os.path.join(directory, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write('\n')


def _isfile(directory: str, name: str) -> bool:
    return os.path.isfile(os.path.join(directory, name))


def _by_file(files: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, path in files.items():
        out.setdefault(path, []).append(name)
    return out
