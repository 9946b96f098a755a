"""Orbax checkpoints: train state + data-iterator state + config, saved together.

Layout of a workdir: `<workdir>/checkpoints/<step>/{state,data,config}`. Saves are async
(the train state is copied to host, then written in the background) and keep the last N.
orbax writes every step to a temporary directory and renames it into place only when
complete, so a run killed during a save leaves at worst an unfinished temporary directory,
which `latest_step` never returns (and which is cleaned up at the next start).

Restores always pass an abstract target whose leaves carry the *current* shardings: orbax
then reshards on load, so a run saved on one mesh resumes on another, and the optax state
keeps its structure. A checkpoint whose shapes differ from the current model is refused
with the differing paths and shapes named.

How a run starts lives in ONE function, `restore_or_initialize`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from codellm_jax import train_state as ts


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Attributes:
    every_steps: save every this many steps (and at the end of training).
    keep: number of most recent checkpoints kept.
    async_save: write in a background thread while training continues.
    init_from: an explicit checkpoint to initialise *params* from when the workdir has none
      (a run's checkpoint directory, i.e. `<workdir>/checkpoints`, or one step inside it);
      the optimizer state and step start fresh (e.g. SFT from a pretraining run).
    init_from_pretrained: a directory in the interop pretrained format (a converted
      Hugging Face checkpoint), loaded with `codellm_jax.interop.pretrained.load_params`.
    """

    every_steps: int = 1000
    keep: int = 3
    async_save: bool = True
    init_from: str = ''
    init_from_pretrained: str = ''


def _is_grain_iterator(it: Any) -> bool:
    return isinstance(it, grain.DatasetIterator | grain.DataLoaderIterator)


class Checkpointer:
    """An orbax CheckpointManager over `<workdir>/checkpoints` with items state/data/config."""

    def __init__(self, directory: str, cfg: CheckpointConfig):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            save_interval_steps=1,  # The loop decides when; the manager just saves.
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                'state': ocp.StandardCheckpointHandler(),
                'data': grain.checkpoint.CheckpointHandler(),
                'config': ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest *finalized* step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(
        self, step: int, state: ts.TrainState, data_iter: Any = None, config: dict | None = None
    ) -> None:
        """Starts saving `step` (async). The iterator state is captured before returning."""
        items = {'state': ocp.args.StandardSave(state)}
        if data_iter is not None and _is_grain_iterator(data_iter):
            items['data'] = grain.checkpoint.CheckpointSave(data_iter)
        if config is not None:
            items['config'] = ocp.args.JsonSave(config)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self, step: int, abstract_state: ts.TrainState, data_iter: Any = None
    ) -> ts.TrainState:
        """Restores `step` onto `abstract_state`'s shapes and shardings (and the iterator)."""
        check_compatible(self.state_metadata(step), abstract_state, f'{self.directory}/{step}')
        items = {'state': ocp.args.StandardRestore(abstract_state)}
        has_data = os.path.isdir(os.path.join(self.directory, str(step), 'data'))
        if data_iter is not None and _is_grain_iterator(data_iter) and has_data:
            items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored['state']

    def state_metadata(self, step: int) -> Any:
        """The stored tree of `state` (leaves with `.shape`), without reading arrays."""
        meta = self._manager.item_metadata(step)
        return _tree_of(meta['state'] if 'state' in meta else None)

    def config(self, step: int) -> dict | None:
        path = os.path.join(self.directory, str(step), 'config')
        if not os.path.isdir(path):
            return None
        return self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
            'config'
        ]

    def wait(self) -> None:
        """Blocks until pending async saves are finalized."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
    if isinstance(tree, ts.TrainState):
        tree = {'step': tree.step, 'params': tree.params, 'opt_state': tree.opt_state}
    leaves = jax.tree_util.tree_leaves_with_path(
        tree, is_leaf=lambda x: hasattr(x, 'shape') and not isinstance(x, dict)
    )
    out = {}
    for path, leaf in leaves:
        if not hasattr(leaf, 'shape'):
            continue
        key = '/'.join(
            str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path
        )
        out[key] = tuple(leaf.shape)
    return out


def check_compatible(stored: Any, target: Any, where: str) -> None:
    """Raises ValueError naming the params whose stored shapes differ from the target's."""
    if stored is None:
        return
    stored_params = _shapes_by_path(_get(stored, 'params'))
    target_params = _shapes_by_path(_get(target, 'params'))
    diffs = []
    for key in sorted(set(stored_params) | set(target_params)):
        a, b = stored_params.get(key), target_params.get(key)
        if a != b:
            diffs.append(
                f'  {key}: checkpoint {a if a is not None else "missing"}, '
                f'model {b if b is not None else "missing"}'
            )
    if diffs:
        raise ValueError(
            f'Checkpoint {where} was written by an incompatible model config; differing '
            f'parameter shapes:\n'
            + '\n'.join(diffs[:20])
            + ('\n  ...' if len(diffs) > 20 else '')
            + '\nUse the model config the checkpoint was trained with, or a fresh workdir.'
        )


def _tree_of(metadata: Any) -> Any:
    """The plain tree inside orbax's (step / tree) metadata wrappers."""
    metadata = getattr(metadata, 'item_metadata', metadata)
    return getattr(metadata, 'tree', metadata)


def _get(tree: Any, name: str) -> Any:
    if isinstance(tree, dict):
        return tree.get(name)
    return getattr(tree, name, None)


def _resolve_step_dir(path: str) -> str:
    """A step directory (holding `state/`) from a run's checkpoints dir or a step dir."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, 'state')):
        return path
    for candidate in (path, os.path.join(path, 'checkpoints')):
        if os.path.isdir(candidate):
            steps = [int(d) for d in os.listdir(candidate) if d.isdigit()]
            if steps and os.path.isdir(os.path.join(candidate, str(max(steps)), 'state')):
                return os.path.join(candidate, str(max(steps)))
    raise FileNotFoundError(
        f'No checkpoint found at {path!r}: expected a step directory containing state/, or a '
        f'directory of numbered steps (a workdir or its checkpoints/).'
    )


def restore_params(path: str, abstract_params: Any) -> Any:
    """Only the params of a saved train state (step dir or run dir), onto abstract_params."""
    step_dir = _resolve_step_dir(path)
    state_dir = os.path.join(step_dir, 'state')
    with ocp.PyTreeCheckpointer() as ckptr:
        check_compatible(_tree_of(ckptr.metadata(state_dir)), {'params': abstract_params}, step_dir)
        restored = ckptr.restore(
            state_dir,
            args=ocp.args.PyTreeRestore(
                item={'params': abstract_params},
                restore_args={
                    'params': ocp.checkpoint_utils.construct_restore_args(abstract_params)
                },
                partial_restore=True,
            ),
        )
    return restored['params']


def restore_or_initialize(
    ckpt: Checkpointer,
    cfg: CheckpointConfig,
    *,
    abstract_state: ts.TrainState,
    init_state: Callable[[], ts.TrainState],
    state_from_params: Callable[[Any], ts.TrainState],
    data_iter: Any = None,
    load_pretrained: Callable[[str, Any], Any] | None = None,
) -> tuple[ts.TrainState, str]:
    """THE start-up order of a run; returns the state and a line saying where it came from.

    1. The latest finalized checkpoint in the workdir (resume: state AND data position).
    2. Else `cfg.init_from`: params of an explicit checkpoint (fresh optimizer, step 0).
    3. Else `cfg.init_from_pretrained`: params in the interop pretrained / Hugging Face
       format, via `load_pretrained(dir, abstract_params)`.
    4. Else `init_state()`: from scratch (random init).

    Args:
      ckpt: the workdir's checkpointer.
      cfg: where else to start from.
      abstract_state: `jax.ShapeDtypeStruct` leaves WITH the current shardings.
      init_state: builds a fresh sharded state (jitted with out_shardings).
      state_from_params: a fresh sharded state around given params.
      data_iter: the training iterator, restored in place on resume.
      load_pretrained: `interop.pretrained.load_params`-like loader.
    """
    step = ckpt.latest_step()
    if step is not None:
        state = ckpt.restore(step, abstract_state, data_iter)
        return state, f'resumed from {ckpt.directory}/{step}'
    if cfg.init_from:
        params = restore_params(cfg.init_from, abstract_state.params)
        return state_from_params(params), f'params from checkpoint {cfg.init_from}'
    if cfg.init_from_pretrained:
        if load_pretrained is None:
            from codellm_jax.interop import pretrained

            load_pretrained = pretrained.load_params
        params = load_pretrained(cfg.init_from_pretrained, abstract_state.params)
        return state_from_params(params), f'params from pretrained {cfg.init_from_pretrained}'
    logging.info('No checkpoint in %s: initialising from scratch.', ckpt.directory)
    return init_state(), 'from scratch'
