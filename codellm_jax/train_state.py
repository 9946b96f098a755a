"""The train state: a pytree of step, params and optimizer state (nothing static).

The optimizer (`optax.GradientTransformation`) is NOT stored in the state: it is bound into
the step with `functools.partial`, so the state is pure data that orbax saves and restores
against an abstract sharded target.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Attributes:
    step: int32 scalar, the number of updates applied.
    params: nested dict of arrays (the model contract's layout).
    opt_state: the optax state for `params`.
    """

    step: jax.Array
    params: Any
    opt_state: Any


def create(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """A fresh state at step 0 (pure; jit it with `out_shardings` for sharded creation)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation) -> TrainState:
    """One optimizer update; `grads` has the structure of `state.params`."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state)
