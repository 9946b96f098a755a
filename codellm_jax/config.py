"""Helpers for `configs/*.py`: parse the `:arg` of `--config=file.py:arg`, and the one place
where ConfigDicts become the frozen dataclasses that the core takes.

Configs are Python files exposing `get_config(arg=None) -> ml_collections.ConfigDict`.
The ConfigDict stops here: models, losses and decoding take frozen dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

import ml_collections

T = TypeVar('T')


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
    """Parses `'size=8b,scan=True'` into a dict, starting from `defaults`.

    Values are Python literals when they parse as one, else strings. Unknown keys are an
    error naming the key and the known ones.
    """
    out = dict(defaults)
    if not arg:
        return out
    for item in arg.split(','):
        if not item.strip():
            continue
        if '=' not in item:
            raise ValueError(f'Config arg {item!r} is not key=value (in {arg!r}).')
        key, value = (s.strip() for s in item.split('=', 1))
        if defaults and key not in defaults:
            raise ValueError(
                f'Unknown config arg {key!r} in {arg!r}; known args: {sorted(defaults)}.'
            )
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def to_dataclass(cls: type[T], cfg: Mapping[str, Any] | ml_collections.ConfigDict) -> T:
    """Builds frozen dataclass `cls` from a ConfigDict, naming unknown or missing fields."""
    if isinstance(cfg, ml_collections.ConfigDict):
        cfg = cfg.to_dict()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(cfg) - set(fields))
    if unknown:
        raise ValueError(
            f'Unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(fields)}.'
        )
    kwargs = {}
    for name, value in cfg.items():
        sub = _dataclass_type(hints[name])
        if sub is not None and isinstance(value, Mapping):
            value = to_dataclass(sub, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f'Cannot build {cls.__name__} from config: {e}') from e


def _dataclass_type(field_type: Any) -> type | None:
    """The dataclass inside a resolved field annotation like `X` or `X | None`."""
    if dataclasses.is_dataclass(field_type):
        return field_type
    for arg in typing.get_args(field_type):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def base_config() -> ml_collections.ConfigDict:
    """Sections every experiment config has; `configs/*.py` start from this.

    `model_kind` selects the model family ('decoder' or 'encoder_decoder'); `model` holds the
    fields of the matching dataclass in `codellm_jax.models.model_config`; `mesh` the device
    mesh and the logical-axis rules (see `codellm_jax.sharding`). The training issue adds
    `data`, `train`, `optimizer`, `checkpoint`, ...
    """
    from codellm_jax import axes

    cfg = ml_collections.ConfigDict()
    cfg.model_kind = 'decoder'
    cfg.model = ml_collections.ConfigDict()
    cfg.mesh = ml_collections.ConfigDict()
    # Sizes of ('data', 'fsdp', 'tensor'); -1 = fill with the remaining devices.
    cfg.mesh.shape = (1, -1, 1)
    cfg.mesh.axes = axes.MESH_AXES
    cfg.mesh.rules = axes.DEFAULT_RULES
    _add_training_sections(cfg)
    return cfg


def _add_training_sections(cfg: ml_collections.ConfigDict) -> None:
    """`mode`, `data`, `train`, `optimizer`, `checkpoint`, `eval`, `generate` (training issue).

    `data`, `optimizer` and `checkpoint` hold exactly the fields of `data.pipeline.DataConfig`,
    `optim.OptimizerConfig` and `checkpoint.CheckpointConfig` (built by `to_dataclass`); `train`
    and `eval` those of `trainer.TrainConfig` / `trainer.EvalConfig`.
    """
    from codellm_jax import checkpoint, optim
    from codellm_jax.data import pipeline

    def defaults(cls) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(
            {f.name: f.default for f in dataclasses.fields(cls)}  # all fields have defaults
        )

    # 'pretrain' | 'sft' | 'eval' | 'generate' (main dispatches on it; --mode overrides).
    cfg.mode = 'pretrain'
    cfg.data = defaults(pipeline.DataConfig)
    cfg.optimizer = defaults(optim.OptimizerConfig)
    cfg.checkpoint = defaults(checkpoint.CheckpointConfig)
    cfg.train = ml_collections.ConfigDict()
    cfg.train.seed = 0
    cfg.train.batch_size = 8  # global batch (sequences per step, all processes)
    cfg.train.seq_len = 256
    cfg.train.num_steps = 1000
    cfg.train.num_microbatches = 1
    cfg.train.on_nonfinite = 'error'  # or 'skip'
    cfg.train.label_smoothing = 0.0
    cfg.train.z_loss = 0.0
    cfg.train.log_every = 10
    cfg.train.profile_start_step = -1  # >= 0: jax.profiler trace of profile_num_steps steps
    cfg.train.profile_num_steps = 3
    cfg.train.peak_flops_per_device = 0.0  # for MFU; 0 = look the device kind up
    cfg.train.data_source = 'pipeline'  # or 'synthetic' (random tokens; smoke tests, benchmarks)
    cfg.eval = ml_collections.ConfigDict()
    cfg.eval.every_steps = 500
    cfg.eval.num_batches = 10
    cfg.eval.split = 'validation'
    cfg.eval.batch_size = 8
    cfg.eval.at_start = False  # also evaluate before the first step (loss before training)
    # The fields of `generate.GenerateConfig`, plus the I/O keys `run_generate` reads:
    # prompts (JSONL path), output (default <workdir>/generate/samples.jsonl), checkpoint.
    from codellm_jax.generate import generator

    cfg.generate = defaults(generator.GenerateConfig)
    cfg.generate.prompts = ''
    cfg.generate.output = ''
    cfg.generate.checkpoint = ''


def model_config(cfg: ml_collections.ConfigDict):
    """`cfg.model` as a `DecoderConfig` or `EncoderDecoderConfig` by `cfg.model_kind`."""
    from codellm_jax.models import model_config as mc

    kinds = {'decoder': mc.DecoderConfig, 'encoder_decoder': mc.EncoderDecoderConfig}
    if cfg.model_kind not in kinds:
        raise ValueError(f'Unknown model_kind {cfg.model_kind!r}; expected one of {sorted(kinds)}.')
    return to_dataclass(kinds[cfg.model_kind], cfg.model)


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` the way `--config=` does, without absl flags.

    Returns the locked ConfigDict that `get_config(arg)` builds.
    """
    import importlib.util
    import os

    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
        raise FileNotFoundError(f'Config file {path!r} does not exist (from {spec!r}).')
    module_spec = importlib.util.spec_from_file_location(f'_codellm_config_{abs(hash(path))}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
        raise ValueError(f'Config file {path!r} has no get_config(arg) function.')
    cfg = module.get_config(arg or None) if arg else module.get_config()
    cfg.lock()
    return cfg


def apply_overrides(
    cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Returns a copy of `cfg` with dotted-key overrides (`{'train.lr': 1e-3}`) applied.

    An unknown key or a value of the wrong type is an error that names the key.
    """
    out = ml_collections.ConfigDict(cfg.to_dict(), type_safe=True)
    out.lock()
    for key, value in overrides.items():
        parts = key.split('.')
        node = out
        for i, part in enumerate(parts[:-1]):
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise KeyError(f'Unknown config key {".".join(parts[: i + 1])!r} (in {key!r}).')
            node = node[part]
        if parts[-1] not in node:
            raise KeyError(
                f'Unknown config key {key!r}; keys at that level: {sorted(node.keys())}.'
            )
        try:
            setattr(node, parts[-1], value)
        except (TypeError, ValueError) as e:
            raise TypeError(f'Config key {key!r}: {e}') from e
    return out
