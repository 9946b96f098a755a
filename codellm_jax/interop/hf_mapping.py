"""A table-driven map between Hugging Face tensors and our stacked parameter tree.

Each `TensorMap` row says where one HF tensor (or one per layer) lives in our params:
norms, embeddings and position biases are copied; linear layers are transposed from
PyTorch's `[out, in]` to our einsum-style kernels and reshaped (e.g. `q_proj [H*Dh, D]` →
`q.kernel [D, H, Dh]`). Per-layer tensors are stacked on a leading L axis. `hf_llama` and
`hf_t5` only write the tables; checking names and shapes lives here, once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

Params = dict[str, Any]

_DTYPES = {'float32': np.dtype(np.float32), 'bfloat16': np.dtype(ml_dtypes.bfloat16)}


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor name pattern ↔ one leaf of our params.

    Attributes:
      hf_name: the HF name; contains `{i}` (the layer index) when `num_layers` is set.
      path: keys of the leaf in our params.
      shape: our per-layer shape (without the L axis).
      n_in: None to copy as is; for a linear layer, how many leading axes of `shape` are
        inputs: HF holds `[prod(shape[n_in:]), prod(shape[:n_in])]`.
      num_layers: stack HF layers 0..L-1 on a leading axis of our leaf when set.
    """

    hf_name: str
    path: tuple[str, ...]
    shape: tuple[int, ...]
    n_in: int | None = None
    num_layers: int | None = None

    @property
    def hf_shape(self) -> tuple[int, ...]:
        if self.n_in is None:
            return self.shape
        return (math.prod(self.shape[self.n_in :]), math.prod(self.shape[: self.n_in]))

    @property
    def our_shape(self) -> tuple[int, ...]:
        return self.shape if self.num_layers is None else (self.num_layers, *self.shape)

    def hf_names(self) -> list[str]:
        if self.num_layers is None:
            return [self.hf_name]
        return [self.hf_name.format(i=i) for i in range(self.num_layers)]

    def from_hf(self, weight: np.ndarray) -> np.ndarray:
        """One HF tensor → our per-layer array."""
        return weight if self.n_in is None else weight.T.reshape(self.shape)

    def to_hf(self, leaf: np.ndarray) -> np.ndarray:
        """Our per-layer array → one HF tensor."""
        if self.n_in is None:
            return np.ascontiguousarray(leaf)
        return np.ascontiguousarray(leaf.reshape(math.prod(self.shape[: self.n_in]), -1).T)


def param_dtype(tensors: Mapping[str, np.ndarray], requested: str | None) -> str:
    """The `param_dtype` name for imported params: `requested`, else the checkpoint's float
    dtype when it is float32 or bfloat16, else float32 (float16/float64 are upcast/downcast).
    """
    if requested is not None:
        if requested not in _DTYPES:
            raise ValueError(f'param_dtype={requested!r}; expected one of {sorted(_DTYPES)}.')
        return requested
    for array in tensors.values():
        if np.dtype(array.dtype) == _DTYPES['bfloat16']:
            return 'bfloat16'
        if np.issubdtype(array.dtype, np.floating):
            return 'float32'
    return 'float32'


def check_tensors(
    shapes: Mapping[str, tuple[int, ...]],
    maps: Iterable[TensorMap],
    *,
    optional: Mapping[str, tuple[int, ...]] | None = None,
    ignore: Iterable[str] = (),
    context: str = '',
) -> None:
    """Raises one ValueError naming every missing, unexpected and wrongly shaped tensor.

    Args:
      shapes: name → shape of the tensors found in the checkpoint.
      maps: the tensors the config implies.
      optional: tensors that may be present (checked for shape when they are).
      ignore: regexes of tensor names to skip (e.g. cached rotary frequencies).
      context: the config fields that fixed the expected shapes, for the message.
    """
    expected = {n: m.hf_shape for m in maps for n in m.hf_names()}
    allowed = {**(optional or {}), **expected}
    ignored = [re.compile(p) for p in ignore]
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(
        n for n in shapes if n not in allowed and not any(p.fullmatch(n) for p in ignored)
    )
    wrong = sorted(
        f'{n}: expected {allowed[n]}, got {tuple(shapes[n])}'
        for n in shapes
        if n in allowed and tuple(shapes[n]) != tuple(allowed[n])
    )
    problems = []
    if missing:
        problems.append(f'missing tensor(s) {_head(missing)}')
    if extra:
        problems.append(f'unexpected tensor(s) {_head(extra)}')
    if wrong:
        problems.append(f'shape(s) inconsistent with the config: {_head(wrong)}')
    if problems:
        raise ValueError(
            'Checkpoint does not match its config'
            + (f' ({context})' if context else '')
            + ': '
            + '; '.join(problems)
            + '. Check that config.json belongs to these weights and that every shard is present.'
        )


def to_params(tensors: Mapping[str, np.ndarray], maps: Iterable[TensorMap], dtype: str) -> Params:
    """HF tensors → our nested params (numpy arrays of `dtype`). Call `check_tensors` first."""
    np_dtype = _DTYPES[dtype]
    params: Params = {}
    for m in maps:
        leaves = [m.from_hf(np.asarray(tensors[n])) for n in m.hf_names()]
        leaf = leaves[0] if m.num_layers is None else np.stack(leaves)
        _set(params, m.path, np.ascontiguousarray(leaf.astype(np_dtype, copy=False)))
    return params


def to_hf(params: Mapping[str, Any], maps: Iterable[TensorMap]) -> dict[str, np.ndarray]:
    """Our params → HF tensors (numpy, the params' dtype), checking the tree against `maps`."""
    maps = list(maps)
    flat = {path: np.asarray(leaf) for path, leaf in _flatten(params)}
    want = {m.path: m.our_shape for m in maps}
    missing = sorted('/'.join(p) for p in set(want) - set(flat))
    extra = sorted('/'.join(p) for p in set(flat) - set(want))
    wrong = sorted(
        f'{"/".join(p)}: expected {want[p]}, got {flat[p].shape}'
        for p in flat
        if p in want and flat[p].shape != want[p]
    )
    if missing or extra or wrong:
        raise ValueError(
            f'Params do not match the model config: missing {_head(missing)}, unexpected '
            f'{_head(extra)}, wrong shapes {_head(wrong)}.'
        )
    out = {}
    for m in maps:
        leaf = flat[m.path]
        if m.num_layers is None:
            out[m.hf_name] = m.to_hf(leaf)
        else:
            for i, name in enumerate(m.hf_names()):
                out[name] = m.to_hf(leaf[i])
    return out


def _set(tree: Params, path: tuple[str, ...], leaf: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = leaf


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _head(items: list[str], n: int = 8) -> str:
    shown = ', '.join(items[:n])
    return f'[{shown}{f", ... ({len(items) - n} more)" if len(items) > n else ""}]'
