"""Our on-disk pretrained-model format: what `convert` writes and training / generation read.

  DIR/model_config.json   {"model_kind": "decoder" | "encoder_decoder", "model": {fields}}
  DIR/params/             an orbax `StandardCheckpointer` checkpoint of the param tree
  DIR/tokenizer/          HF tokenizer files, copied from the HF checkpoint when present

`load_params(dir, abstract_params)` restores straight into the shardings of
`abstract_params` (a tree of `jax.ShapeDtypeStruct` with `.sharding`), so a large model is
never materialized on one host; shapes are checked first, naming every differing tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from codellm_jax import config as config_lib
from codellm_jax.models.model_config import DecoderConfig, EncoderDecoderConfig

MODEL_CONFIG_FILE = 'model_config.json'
PARAMS_DIR = 'params'
TOKENIZER_DIR = 'tokenizer'
MODEL_KINDS = {'decoder': DecoderConfig, 'encoder_decoder': EncoderDecoderConfig}
TOKENIZER_FILES = (
    'tokenizer.json',
    'tokenizer_config.json',
    'special_tokens_map.json',
    'added_tokens.json',
    'spiece.model',
    'tokenizer.model',
    'vocab.json',
    'vocab.txt',
    'merges.txt',
    'generation_config.json',
)

ModelConfig = DecoderConfig | EncoderDecoderConfig


def save_pretrained(
    out_dir: str,
    model_kind: str,
    model_cfg: ModelConfig,
    params: Mapping[str, Any],
    tokenizer_src: str | None = None,
) -> None:
    """Writes `model_config.json`, `params/` and (from `tokenizer_src`) `tokenizer/`.

    Args:
      out_dir: created if needed; an existing `params/` in it is replaced.
      model_kind: 'decoder' or 'encoder_decoder', matching `model_cfg`'s type.
      model_cfg: the frozen model dataclass.
      params: nested dict of numpy or jax arrays (possibly sharded).
      tokenizer_src: a directory whose HF tokenizer files are copied, or None.
    """
    _check_kind(model_kind, model_cfg)
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, MODEL_CONFIG_FILE), 'w') as f:
        json.dump({'model_kind': model_kind, 'model': dataclasses.asdict(model_cfg)}, f, indent=2)
        f.write('\n')
    params_dir = os.path.join(out_dir, PARAMS_DIR)
    if os.path.exists(params_dir):
        shutil.rmtree(params_dir)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params_dir, dict(params))
    checkpointer.wait_until_finished()
    checkpointer.close()
    if tokenizer_src is not None:
        copy_tokenizer_files(tokenizer_src, os.path.join(out_dir, TOKENIZER_DIR))


def load_model_config(pretrained_dir: str) -> tuple[str, ModelConfig]:
    """Reads `model_config.json` → (model_kind, frozen model config)."""
    path = os.path.join(pretrained_dir, MODEL_CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f'{path} not found: {pretrained_dir!r} is not a codellm_jax pretrained directory '
            '(for a Hugging Face checkpoint run `python -m codellm_jax.interop.convert '
            '--hf_dir=... --out_dir=...` first).'
        )
    with open(path) as f:
        data = json.load(f)
    kind = data.get('model_kind')
    if kind not in MODEL_KINDS:
        raise ValueError(f'{path}: model_kind={kind!r}; expected one of {sorted(MODEL_KINDS)}.')
    return kind, config_lib.to_dataclass(MODEL_KINDS[kind], data.get('model', {}))


def load_params(pretrained_dir: str, abstract_params: Any = None) -> dict[str, Any]:
    """Restores the param tree.

    Args:
      pretrained_dir: a directory written by `save_pretrained`.
      abstract_params: optional tree of `jax.ShapeDtypeStruct` (with `.sharding`) to restore
        into: arrays come back with those shardings and dtypes. None restores every leaf
        onto the first local device.

    Raises:
      ValueError naming every tensor whose presence or shape differs from `abstract_params`.
    """
    params_dir = os.path.abspath(os.path.join(pretrained_dir, PARAMS_DIR))
    if not os.path.isdir(params_dir):
        raise FileNotFoundError(f'No {PARAMS_DIR}/ checkpoint in {pretrained_dir!r}.')
    checkpointer = ocp.StandardCheckpointer()
    stored = _stored_shapes(checkpointer.metadata(params_dir))
    if abstract_params is None:
        device = jax.local_devices()[0]
        abstract_params = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_single(device)),
            _metadata_tree(checkpointer.metadata(params_dir)),
        )
    else:
        _check_shapes(stored, abstract_params, pretrained_dir)
    restored = checkpointer.restore(params_dir, abstract_params)
    checkpointer.close()
    return restored


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
    """Copies the HF tokenizer files found in `src_dir` to `dst_dir`; returns their names."""
    found = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(src_dir, f))]
    if found:
        os.makedirs(dst_dir, exist_ok=True)
    for name in found:
        shutil.copy2(os.path.join(src_dir, name), os.path.join(dst_dir, name))
    return found


def _check_kind(model_kind: str, model_cfg: Any) -> None:
    if model_kind not in MODEL_KINDS:
        raise ValueError(f'model_kind={model_kind!r}; expected one of {sorted(MODEL_KINDS)}.')
    if not isinstance(model_cfg, MODEL_KINDS[model_kind]):
        raise TypeError(
            f'model_kind={model_kind!r} needs a {MODEL_KINDS[model_kind].__name__}, got '
            f'{type(model_cfg).__name__}.'
        )


def _metadata_tree(metadata: Any) -> Any:
    # `StandardCheckpointer.metadata` returns StepMetadata (item_metadata = the tree) in
    # recent orbax, the tree itself in older ones.
    tree = getattr(metadata, 'item_metadata', metadata)
    return getattr(tree, 'tree', tree)


def _stored_shapes(metadata: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_leaves_with_path(_metadata_tree(metadata))
    return {jax.tree_util.keystr(p): tuple(m.shape) for p, m in leaves}


def _check_shapes(stored: dict[str, tuple[int, ...]], abstract: Any, where: str) -> None:
    want = {
        jax.tree_util.keystr(p): tuple(np.shape(x))
        for p, x in jax.tree_util.tree_leaves_with_path(abstract)
    }
    missing = sorted(set(want) - set(stored))
    extra = sorted(set(stored) - set(want))
    wrong = sorted(
        f'{k}: checkpoint {stored[k]}, expected {want[k]}'
        for k in want
        if k in stored and stored[k] != want[k]
    )
    if missing or extra or wrong:
        raise ValueError(
            f'Params in {where!r} do not match the model: missing {missing}, unexpected {extra}, '
            f'shape mismatches {wrong}. Was the checkpoint written for another model config?'
        )


def _single(device: jax.Device) -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(device)
