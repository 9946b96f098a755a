r"""Converts Hugging Face checkpoints to our pretrained format and back.

  # HF (config.json + *.safetensors) → ours (model_config.json + params/ + tokenizer/)
  python -m codellm_jax.interop.convert --hf_dir=/ckpt/codet5-base --out_dir=/ckpt/codet5_jax
  # ours → HF, loadable by `AutoModelForCausalLM` / `T5ForConditionalGeneration`
  python -m codellm_jax.interop.convert --direction=to_hf --in_dir=/ckpt/codet5_jax \
      --out_dir=/ckpt/codet5_hf

Supported architectures: LlamaForCausalLM (→ model_kind 'decoder') and
T5ForConditionalGeneration, incl. CodeT5 (→ 'encoder_decoder'). Prints a one-line summary.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np
from absl import app, flags

from codellm_jax.interop import hf_llama, hf_t5, pretrained, safetensors_io

# architecture → (model_kind, HF module); the model_type fallback is for configs without
# an `architectures` list.
_BY_ARCHITECTURE = {
    hf_llama.ARCHITECTURE: ('decoder', hf_llama),
    hf_t5.ARCHITECTURE: ('encoder_decoder', hf_t5),
}
_BY_MODEL_TYPE = {hf_llama.MODEL_TYPE: hf_llama.ARCHITECTURE, hf_t5.MODEL_TYPE: hf_t5.ARCHITECTURE}
_BY_KIND = {kind: module for kind, module in _BY_ARCHITECTURE.values()}
# The source config.json, saved beside our pretrained files by `hf_to_pretrained`.
HF_CONFIG_FILE = 'hf_config.json'
# Fields of the source config.json carried back on export (our model configs lack them).
_KEPT_HF_FIELDS = ('bos_token_id', 'eos_token_id', 'pad_token_id', 'sep_token_id')


def hf_architecture(hf_config: Mapping[str, Any]) -> str:
    """The supported architecture a `config.json` describes; a clear error for others."""
    names = list(hf_config.get('architectures') or [])
    for name in names:
        if name in _BY_ARCHITECTURE:
            return name
    if not names and hf_config.get('model_type') in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[hf_config['model_type']]
    got = names or f'model_type={hf_config.get("model_type")!r}'
    raise ValueError(
        f'Unsupported Hugging Face architecture {got}; supported: {sorted(_BY_ARCHITECTURE)}.'
    )


def load_hf(hf_dir: str, param_dtype: str | None = None) -> tuple[str, Any, dict[str, Any]]:
    """Reads an HF checkpoint directory → (model_kind, model config, params of numpy arrays)."""
    hf_config = safetensors_io.read_config(hf_dir)
    kind, module = _BY_ARCHITECTURE[hf_architecture(hf_config)]
    module.config_from_hf(hf_config)  # config errors before reading the weights
    cfg, params = module.from_hf(hf_config, safetensors_io.read_tensors(hf_dir), param_dtype)
    return kind, cfg, params


def save_hf(
    out_dir: str,
    model_kind: str,
    model_cfg: Any,
    params: Mapping[str, Any],
    max_shard_bytes: int | str = safetensors_io.DEFAULT_MAX_SHARD_BYTES,
    extra_config: Mapping[str, Any] | None = None,
) -> None:
    """Writes an HF checkpoint (`config.json` + safetensors) of our model; `extra_config`
    (e.g. `bos_token_id`) is merged into config.json."""
    if model_kind not in _BY_KIND:
        raise ValueError(f'model_kind={model_kind!r}; expected one of {sorted(_BY_KIND)}.')
    _BY_KIND[model_kind].save(out_dir, model_cfg, params, max_shard_bytes, extra_config)


def hf_to_pretrained(hf_dir: str, out_dir: str, param_dtype: str | None = None) -> str:
    """HF directory → our pretrained directory (tokenizer files copied). Returns a summary."""
    kind, cfg, params = load_hf(hf_dir, param_dtype)
    pretrained.save_pretrained(out_dir, kind, cfg, params, tokenizer_src=hf_dir)
    # Kept for the way back: token ids etc. that our model config does not hold.
    shutil.copy2(os.path.join(hf_dir, 'config.json'), os.path.join(out_dir, HF_CONFIG_FILE))
    return summary(kind, cfg, params, f'{hf_dir} → {out_dir}')


def pretrained_to_hf(
    in_dir: str, out_dir: str, max_shard_bytes: int | str = safetensors_io.DEFAULT_MAX_SHARD_BYTES
) -> str:
    """Our pretrained directory → HF directory (tokenizer files copied). Returns a summary."""
    kind, cfg = pretrained.load_model_config(in_dir)
    params = pretrained.load_params(in_dir)
    extra = {}
    source_config = os.path.join(in_dir, HF_CONFIG_FILE)
    if os.path.isfile(source_config):
        with open(source_config) as f:
            source = json.load(f)
        extra = {k: source[k] for k in _KEPT_HF_FIELDS if source.get(k) is not None}
    save_hf(out_dir, kind, cfg, params, max_shard_bytes, extra)
    pretrained.copy_tokenizer_files(os.path.join(in_dir, pretrained.TOKENIZER_DIR), out_dir)
    return summary(kind, cfg, params, f'{in_dir} → {out_dir}')


def summary(model_kind: str, cfg: Any, params: Mapping[str, Any], where: str) -> str:
    """One line: architecture, size, parameter count and dtype."""
    count = sum(int(np.prod(np.shape(x))) for x in _leaves(params))
    arch = hf_llama.ARCHITECTURE if model_kind == 'decoder' else hf_t5.ARCHITECTURE
    if model_kind == 'decoder':
        shape = (
            f'L={cfg.num_layers} D={cfg.d_model} H={cfg.num_heads} K={cfg.num_kv_heads} '
            f'F={cfg.d_ff} V={cfg.vocab_size}'
        )
    else:
        shape = (
            f'Lenc={cfg.num_encoder_layers} Ldec={cfg.num_decoder_layers} D={cfg.d_model} '
            f'H={cfg.num_heads} F={cfg.d_ff} V={cfg.vocab_size} ff={cfg.feed_forward}'
        )
    return (
        f'{arch} ({model_kind}): {count:,} params ({count / 1e6:.2f}M), {shape}, '
        f'tied={cfg.tie_embeddings}, {cfg.param_dtype}: {where}'
    )


def _leaves(tree: Mapping[str, Any]):
    for value in tree.values():
        if isinstance(value, Mapping):
            yield from _leaves(value)
        else:
            yield value


def _define_flags() -> None:
    # Defined when run as a command only, so importing this module (training does) registers
    # no flags that could clash with the importer's.
    flags.DEFINE_enum('direction', 'to_ours', ['to_ours', 'to_hf'], 'Which way to convert.')
    flags.DEFINE_string('hf_dir', None, 'HF checkpoint directory (direction=to_ours).')
    flags.DEFINE_string('in_dir', None, 'Our pretrained directory (direction=to_hf).')
    flags.DEFINE_string('out_dir', None, 'Directory to write.')
    flags.DEFINE_enum(
        'param_dtype', None, ['float32', 'bfloat16'], "Cast params (default: the checkpoint's)."
    )
    flags.DEFINE_string('max_shard_size', '5GB', 'Largest safetensors shard (direction=to_hf).')


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    f = flags.FLAGS
    if not f.out_dir:
        raise app.UsageError('--out_dir is required.')
    if f.direction == 'to_ours':
        if not f.hf_dir:
            raise app.UsageError('--hf_dir is required for --direction=to_ours.')
        print(hf_to_pretrained(f.hf_dir, f.out_dir, f.param_dtype))
    else:
        if not f.in_dir:
            raise app.UsageError('--in_dir is required for --direction=to_hf.')
        print(pretrained_to_hf(f.in_dir, f.out_dir, f.max_shard_size))


if __name__ == '__main__':
    _define_flags()
    app.run(main)
