"""An experiment built from its config: where the ConfigDict stops.

`build(config)` turns the ConfigDict into frozen dataclasses, a mesh and logical rules, the
abstract sharded train state (abstract first: `eval_shape` -> logical specs -> shardings),
and validates batch sizes against the mesh. Helpers here make the sharded state
initialisers, the data iterators (pipeline or synthetic) and the jitted eval step; the loop
lives in `codellm_jax.trainer`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from codellm_jax import checkpoint as ckpt_lib
from codellm_jax import config as config_lib
from codellm_jax import losses, optim, sharding, steps
from codellm_jax import train_state as ts
from codellm_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`config.train` (see `config.base_config` for the meaning of each field)."""

    seed: int = 0
    batch_size: int = 8
    seq_len: int = 256
    num_steps: int = 1000
    num_microbatches: int = 1
    on_nonfinite: str = 'error'
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    log_every: int = 10
    profile_start_step: int = -1
    profile_num_steps: int = 3
    peak_flops_per_device: float = 0.0
    data_source: str = 'pipeline'

    def __post_init__(self):
        if self.data_source not in ('pipeline', 'synthetic'):
            raise ValueError(
                f"train.data_source={self.data_source!r}; expected 'pipeline' or 'synthetic'."
            )
        for name in ('batch_size', 'seq_len', 'num_steps', 'log_every'):
            if getattr(self, name) < 1:
                raise ValueError(f'train.{name}={getattr(self, name)} must be >= 1.')


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """`config.eval`: every_steps (0 = never during training), num_batches, split, batch_size,
    at_start (also evaluate before the first step of a run)."""

    every_steps: int = 500
    num_batches: int = 10
    split: str = 'validation'
    batch_size: int = 8
    at_start: bool = False


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything static a run needs, built once from the config by `build`."""

    model_kind: str
    model_cfg: Any
    data_cfg: pipeline.DataConfig
    train_cfg: TrainConfig
    eval_cfg: EvalConfig
    opt_cfg: optim.OptimizerConfig
    ckpt_cfg: ckpt_lib.CheckpointConfig
    step_cfg: steps.StepConfig
    mesh: Any
    rules: Any
    abstract_state: Any  # TrainState of ShapeDtypeStruct with shardings
    state_shardings: Any
    batch_sharding: Any


def _model_module(model_kind: str):
    if model_kind == 'decoder':
        from codellm_jax.models import decoder

        return decoder
    from codellm_jax.models import encoder_decoder

    return encoder_decoder


def _opt_state_shardings(opt_shapes: Any, param_shardings: Any, mesh) -> Any:
    """Shards each optimizer leaf like the param it mirrors (same path suffix and shape);
    anything else (counts, Adafactor's factored moments) is replicated."""
    by_path = {}
    for path, sh in jax.tree_util.tree_leaves_with_path(
        param_shardings, is_leaf=lambda x: isinstance(x, jax.sharding.NamedSharding)
    ):
        by_path[tuple(str(k) for k in path)] = sh
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def pick(path, leaf):
        keys = tuple(str(k) for k in path)
        for i in range(len(keys)):
            sh = by_path.get(keys[i:])
            if sh is not None and len(sh.spec) <= len(leaf.shape):
                return sh if _divides(leaf.shape, sh, mesh) else replicated
        return replicated

    return jax.tree_util.tree_map_with_path(pick, opt_shapes)


def _divides(shape, sh, mesh) -> bool:
    return all(
        dim % sharding.mesh_axis_size(mesh, entry) == 0
        for dim, entry in zip(shape, sh.spec, strict=False)
    )


def build(config: ml_collections.ConfigDict, model_override: tuple[str, Any] | None = None):
    """Config → (Experiment, tx, schedule). Validates batch sizes against the mesh."""
    if model_override is not None:
        model_kind, model_cfg = model_override
    else:
        model_kind, model_cfg = config.model_kind, config_lib.model_config(config)
    data_cfg = config_lib.to_dataclass(pipeline.DataConfig, config.data)
    train_cfg = config_lib.to_dataclass(TrainConfig, config.train)
    eval_cfg = config_lib.to_dataclass(EvalConfig, config.eval)
    opt_cfg = config_lib.to_dataclass(optim.OptimizerConfig, config.optimizer)
    ckpt_cfg = config_lib.to_dataclass(ckpt_lib.CheckpointConfig, config.checkpoint)
    step_cfg = steps.StepConfig(
        num_microbatches=train_cfg.num_microbatches,
        on_nonfinite=train_cfg.on_nonfinite,
        loss=losses.LossConfig(train_cfg.label_smoothing, train_cfg.z_loss),
    )
    is_decoder_task = data_cfg.task in pipeline.DECODER_TASKS
    if is_decoder_task != (model_kind == 'decoder'):
        raise ValueError(
            f'data.task={data_cfg.task!r} does not fit model_kind={model_kind!r}: decoder tasks '
            f'are {pipeline.DECODER_TASKS}, the others need an encoder_decoder.'
        )
    mesh = sharding.make_mesh(config.mesh)
    rules = sharding.model_rules(config.mesh.rules, model_cfg, mesh)
    dp = sharding.logical_size(mesh, rules, 'batch')
    for name, size in (
        ('train.batch_size', train_cfg.batch_size),
        ('eval.batch_size', eval_cfg.batch_size),
    ):
        micro = train_cfg.num_microbatches if name.startswith('train') else 1
        if size % micro or (size // micro) % dp or size % jax.process_count():
            raise ValueError(
                f'{name}={size} (with {micro} microbatch(es)) is not divisible by the '
                f'data-parallel size {dp} of mesh {dict(mesh.shape)} (and by the '
                f'{jax.process_count()} processes); use a multiple of {dp * micro}.'
            )
    tx = optim.make_optimizer(opt_cfg)
    schedule = optim.make_schedule(opt_cfg)
    module = _model_module(model_kind)
    init_boxed = functools.partial(module.init_params_boxed, model_cfg)
    param_shapes, param_specs = sharding.abstract_params(init_boxed, jax.random.key(0))
    param_sh = sharding.param_shardings(param_specs, mesh, rules, param_shapes)
    state_shapes = jax.eval_shape(functools.partial(ts.create, tx=tx), param_shapes)
    state_sh = ts.TrainState(
        step=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        params=param_sh,
        opt_state=_opt_state_shardings(state_shapes.opt_state, param_sh, mesh),
    )
    abstract_state = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, state_sh
    )
    exp = Experiment(
        model_kind=model_kind,
        model_cfg=model_cfg,
        data_cfg=data_cfg,
        train_cfg=train_cfg,
        eval_cfg=eval_cfg,
        opt_cfg=opt_cfg,
        ckpt_cfg=ckpt_cfg,
        step_cfg=step_cfg,
        mesh=mesh,
        rules=rules,
        abstract_state=abstract_state,
        state_shardings=state_sh,
        batch_sharding=sharding.logical_sharding(mesh, rules, 'batch'),
    )
    return exp, tx, schedule


def state_initializers(exp: Experiment, tx) -> tuple[Any, Any]:
    """(init_state(), state_from_params(params)): jitted, sharded at creation."""
    module = _model_module(exp.model_kind)
    init_boxed = functools.partial(module.init_params_boxed, exp.model_cfg)
    seed = exp.train_cfg.seed

    @functools.partial(jax.jit, out_shardings=exp.state_shardings)
    def init_fn():
        return ts.create(nn.meta.unbox(init_boxed(jax.random.key(seed))), tx)

    from_params = jax.jit(
        functools.partial(ts.create, tx=tx),
        in_shardings=(exp.state_shardings.params,),
        out_shardings=exp.state_shardings,
    )
    return init_fn, from_params


def seq_lens(exp: Experiment) -> dict[str, int]:
    return pipeline.sequence_lengths(exp.data_cfg, exp.train_cfg.seq_len)


def make_iterator(exp: Experiment, split: str, batch_size: int, num_epochs: int | None = None):
    """This process's iterator over `split` (the data pipeline, or synthetic batches)."""
    per_process = batch_size // jax.process_count()
    if exp.train_cfg.data_source == 'synthetic':
        from codellm_jax import synthetic_data

        return synthetic_data.make_iterator(
            exp.model_kind,
            exp.model_cfg.vocab_size,
            seq_lens(exp),
            per_process,
            seed=exp.train_cfg.seed + (0 if split == 'train' else 1),
            process_index=jax.process_index(),
            num_batches=None if num_epochs is None else 64,
        )
    from codellm_jax.data import tokenizer as tok_lib

    tok = tok_lib.load_tokenizer(exp.data_cfg.tokenizer_path)
    tok_lib.check_vocab(tok, exp.model_cfg.vocab_size)
    return pipeline.make_iterator(
        exp.data_cfg,
        tok,
        split=split,
        seq_len=exp.train_cfg.seq_len,
        batch_size=per_process,
        seed=exp.train_cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_epochs=num_epochs,
    )


def global_batch(exp: Experiment, batch) -> dict:
    keys = steps.batch_keys(exp.model_kind)
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f'Batch lacks {missing} (has {sorted(batch)}); see the batch contract.')
    return pipeline.to_global_batch({k: batch[k] for k in keys}, exp.mesh, exp.batch_sharding.spec)


def make_eval_fn(exp: Experiment):
    """`eval_fn(params, global_batch) -> sums`, jitted with explicit shardings."""
    fn = functools.partial(
        steps.eval_step,
        logits_fn=steps.make_logits_fn(exp.model_kind, exp.model_cfg),
        loss_cfg=exp.step_cfg.loss,
    )
    return steps.jit_eval_step(fn, exp.state_shardings.params, exp.batch_sharding, exp.mesh)


def run_eval(exp: Experiment, eval_fn, params, split: str, num_batches: int) -> dict[str, float]:
    """Loss, perplexity and accuracy over up to `num_batches` of `split` (one pass)."""
    it = make_iterator(exp, split, exp.eval_cfg.batch_size, num_epochs=1)
    total = None
    with sharding.logical_rules(exp.mesh, exp.rules):
        for i, batch in enumerate(it):
            if i >= num_batches:
                break
            sums = eval_fn(params, global_batch(exp, batch))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    if total is None:
        raise ValueError(f'Split {split!r} gave no eval batch (batch_size too large?).')
    return {k: float(v) for k, v in losses.summarize(jax.device_get(total)).items()}


def check_mode(config: ml_collections.ConfigDict, exp: Experiment, ckpt) -> None:
    mode = config.mode
    if mode == 'sft':
        if exp.data_cfg.task not in ('sft', 'seq2seq'):
            raise ValueError(
                f"mode='sft' needs data.task 'sft' or 'seq2seq', not {exp.data_cfg.task!r}."
            )
        if ckpt.latest_step() is None and not (
            exp.ckpt_cfg.init_from or exp.ckpt_cfg.init_from_pretrained
        ):
            raise ValueError(
                "mode='sft' starts from a trained model: set checkpoint.init_from (a pretraining "
                'run) or checkpoint.init_from_pretrained (a converted HF checkpoint).'
            )
    elif mode == 'pretrain' and exp.data_cfg.task not in ('lm', 'fim', 'span_corruption'):
        raise ValueError(
            f"mode='pretrain' needs data.task lm/fim/span_corruption, not {exp.data_cfg.task!r}."
        )
