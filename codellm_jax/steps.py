"""The pure train and eval steps, and their one-time jit with explicit shardings.

`train_step(state, batch, rng)` (after binding the static choices with `functools.partial`)
computes token-weighted loss *sums* over `num_microbatches` microbatches with `lax.scan`,
divides the summed gradients once by the total token weight (so accumulation gives the same
update as one big batch), clips/updates via optax, and refuses non-finite updates: when the
loss or the gradient norm is not finite the state is returned unchanged and
`metrics['finite'] == 0`, so NaN parameters can never reach a checkpoint; the loop then
stops (or skips the step, if configured).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from codellm_jax import losses
from codellm_jax import train_state as ts

Batch = Mapping[str, jax.Array]
# (params, batch) -> (logits_BxTxV, targets_BxT, weights_BxT)
LogitsFn = Callable[[Any, Batch], tuple[jax.Array, jax.Array, jax.Array]]

DECODER_KEYS = ('input_tokens', 'target_tokens', 'positions', 'segment_ids', 'loss_weights')
ENCODER_DECODER_KEYS = (
    'encoder_input_tokens',
    'encoder_segment_ids',
    'encoder_positions',
    'decoder_input_tokens',
    'decoder_target_tokens',
    'decoder_segment_ids',
    'decoder_positions',
    'decoder_loss_weights',
)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Attributes:
    num_microbatches: gradient accumulation factor; the per-step batch must divide by it.
    on_nonfinite: 'error' (the loop stops, naming the step) or 'skip' (drop the update).
    loss: label smoothing / z-loss.
    """

    num_microbatches: int = 1
    on_nonfinite: str = 'error'
    loss: losses.LossConfig = losses.LossConfig()

    def __post_init__(self):
        if self.num_microbatches < 1:
            raise ValueError(f'num_microbatches={self.num_microbatches} must be >= 1.')
        if self.on_nonfinite not in ('error', 'skip'):
            raise ValueError(f"on_nonfinite={self.on_nonfinite!r}; expected 'error' or 'skip'.")


def decoder_logits(params: Any, batch: Batch, *, model_cfg) -> tuple[jax.Array, ...]:
    """Decoder (causal LM / FIM / SFT) logits, targets and weights from a packed batch."""
    from codellm_jax.models import decoder

    logits_BxTxV = decoder.forward(
        params,
        model_cfg,
        batch['input_tokens'],
        batch['positions'],
        batch['segment_ids'],
    )
    return logits_BxTxV, batch['target_tokens'], batch['loss_weights']


def encoder_decoder_logits(params: Any, batch: Batch, *, model_cfg) -> tuple[jax.Array, ...]:
    """Encoder-decoder (span corruption / seq2seq) logits, targets and weights."""
    from codellm_jax.models import encoder_decoder

    # Segment ids keep packed examples apart in encoder self- and decoder cross-attention.
    encoder_mask_BxS = batch['encoder_segment_ids'] > 0
    encoded_BxSxD = encoder_decoder.encode(
        params,
        model_cfg,
        batch['encoder_input_tokens'],
        encoder_mask_BxS,
        segment_ids_BxS=batch['encoder_segment_ids'],
    )
    logits_BxTxV = encoder_decoder.decode(
        params,
        model_cfg,
        batch['decoder_input_tokens'],
        encoded_BxSxD,
        encoder_mask_BxS,
        batch['decoder_segment_ids'],
        batch['decoder_positions'],
        encoder_segment_ids_BxS=batch['encoder_segment_ids'],
    )
    return logits_BxTxV, batch['decoder_target_tokens'], batch['decoder_loss_weights']


def make_logits_fn(model_kind: str, model_cfg) -> LogitsFn:
    """The model adapter of `model_kind` ('decoder' or 'encoder_decoder')."""
    if model_kind == 'decoder':
        return functools.partial(decoder_logits, model_cfg=model_cfg)
    if model_kind == 'encoder_decoder':
        return functools.partial(encoder_decoder_logits, model_cfg=model_cfg)
    raise ValueError(f"model_kind={model_kind!r}; expected 'decoder' or 'encoder_decoder'.")


def batch_keys(model_kind: str) -> tuple[str, ...]:
    """The batch contract's keys for `model_kind`."""
    return DECODER_KEYS if model_kind == 'decoder' else ENCODER_DECODER_KEYS


def loss_fn(
    params: Any, batch: Batch, rng: jax.Array, *, logits_fn: LogitsFn, loss_cfg: losses.LossConfig
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(loss_sum, sums): the weighted loss numerator to differentiate, and all sums."""
    del rng  # The models of the contract are deterministic (no dropout).
    logits_BxTxV, targets_BxT, weights_BxT = logits_fn(params, batch)
    sums = losses.cross_entropy_sums(logits_BxTxV, targets_BxT, weights_BxT, loss_cfg)
    return sums['loss_sum'], sums


def _split_microbatches(batch: Batch, num: int) -> Batch:
    """[B, ...] -> [num, B // num, ...]; microbatch m takes rows m, m + num, ...

    Taking strided rows keeps every microbatch spread over all data-parallel shards.
    """

    def split(x):
        if x.shape[0] % num:
            raise ValueError(f'Batch size {x.shape[0]} is not divisible by num_microbatches={num}.')
        x = x.reshape((x.shape[0] // num, num) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, dict(batch))


def train_step(
    state: ts.TrainState,
    batch: Batch,
    rng: jax.Array,
    *,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    logits_fn: LogitsFn,
    cfg: StepConfig,
) -> tuple[ts.TrainState, dict[str, jax.Array]]:
    """One optimizer update on `batch` (global, [B, ...] leaves).

    Returns the new state and scalar metrics: the loss sums of `losses.cross_entropy_sums`,
    `grad_norm` (before clipping), `learning_rate` (of this update) and `finite` (1.0 when the
    update was applied, 0.0 when it was refused for a non-finite loss or gradient; the step
    counter advances either way).
    """
    rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.grad(
        functools.partial(loss_fn, logits_fn=logits_fn, loss_cfg=cfg.loss), has_aux=True
    )
    if cfg.num_microbatches == 1:
        grads, sums = grad_fn(state.params, batch, rng)
    else:
        micro = _split_microbatches(batch, cfg.num_microbatches)

        def body(carry, xs):
            grads_acc, sums_acc = carry
            mb, i = xs
            g, s = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            grads_acc = jax.tree.map(lambda a, b: a + b.astype(a.dtype), grads_acc, g)
            sums_acc = jax.tree.map(jnp.add, sums_acc, s)
            return (grads_acc, sums_acc), None

        zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        zeros_s = {
            k: jnp.zeros((), jnp.float32)
            for k in ('loss_sum', 'nll_sum', 'z_loss_sum', 'correct_sum', 'weight_sum')
        }
        (grads, sums), _ = jax.lax.scan(
            body, (zeros_g, zeros_s), (micro, jnp.arange(cfg.num_microbatches))
        )
    denom = jnp.maximum(sums['weight_sum'], 1e-8)
    grads = jax.tree.map(lambda g, p: (g / denom).astype(p.dtype), grads, state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(sums['loss_sum']) & jnp.isfinite(grad_norm)
    new_state = ts.apply_gradients(state, grads, tx)
    # Also refuse updates that overflow the params (e.g. an infinite learning rate).
    finite = finite & jnp.isfinite(optax.tree.norm(new_state.params))
    # Never apply a non-finite update: keep the old params and optimizer state. The step
    # still counts the batch consumed, so the data position and the step stay in lockstep.
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    state = ts.TrainState(
        step=new_state.step,
        params=keep(new_state.params, state.params),
        opt_state=keep(new_state.opt_state, state.opt_state),
    )
    metrics = dict(sums)
    metrics['grad_norm'] = grad_norm
    metrics['learning_rate'] = jnp.asarray(schedule(new_state.step - 1), jnp.float32)
    metrics['finite'] = finite.astype(jnp.float32)
    return state, metrics


def eval_step(
    params: Any, batch: Batch, *, logits_fn: LogitsFn, loss_cfg: losses.LossConfig
) -> dict[str, jax.Array]:
    """Loss sums of `batch` (add them over batches, then `losses.summarize`)."""
    _, sums = loss_fn(params, batch, jax.random.key(0), logits_fn=logits_fn, loss_cfg=loss_cfg)
    return sums


def jit_train_step(step_fn: Callable, state_shardings: Any, batch_sharding: Any, mesh) -> Callable:
    """`step_fn(state, batch, rng)` jitted once: explicit in/out shardings, state donated."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )


def jit_eval_step(step_fn: Callable, param_shardings: Any, batch_sharding: Any, mesh) -> Callable:
    """`step_fn(params, batch)` jitted with explicit shardings (params not donated)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(
        step_fn, in_shardings=(param_shardings, batch_sharding), out_shardings=replicated
    )
