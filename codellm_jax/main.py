"""Entry point: `python -m codellm_jax.main --config=configs/<name>.py[:arg] --workdir=DIR`.

Single values override as `--config.train.num_steps=100` (the config is locked: an unknown
key or a value of the wrong type is an error naming the key). Modes (`config.mode`, or
`--mode`): 'pretrain' and 'sft' train (`trainer.train_and_evaluate`), 'eval' reports loss
and perplexity on `config.eval.split` (`trainer.evaluate`), 'generate' decodes
(`generate.run_generate`). The workdir records the resolved config, git commit, package
versions and command line (`run_info`).
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from codellm_jax import trainer

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (configs/*.py[:arg]).', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and records.')
_MODE = flags.DEFINE_enum('mode', None, trainer.MODES, 'Overrides config.mode.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-process runs).'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the job.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process (0-based).')
flags.mark_flags_as_required(['config', 'workdir'])


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None):
    """`jax.distributed.initialize` with the flags when given; with no arguments when a
    cluster environment is detected (SLURM with several tasks, a multi-host TPU slice), where
    jax reads the topology itself; nothing for a single process."""
    if coordinator or num_processes or process_id is not None:
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif int(os.environ.get('SLURM_NTASKS', '1')) > 1 or ',' in os.environ.get(
        'TPU_WORKER_HOSTNAMES', ''
    ):
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info(
        'JAX process %d/%d, devices %s', jax.process_index(), jax.process_count(), jax.devices()
    )
    try:
        trainer.run(_CONFIG.value, _WORKDIR.value, _MODE.value)
    except (ValueError, KeyError, FileNotFoundError, PermissionError, FloatingPointError) as e:
        print(f'ERROR: {e}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    app.run(main)
