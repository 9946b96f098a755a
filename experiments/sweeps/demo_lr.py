"""Learning-rate x warmup ablation of the demo pretraining run (short runs, 3 seeds).

    python -m experiments.sweep --sweep=experiments/sweeps/demo_lr.py --root=workdirs/sweeps/demo_lr
    python -m experiments.sweep --sweep=experiments/sweeps/demo_lr.py --dry_run   # just the commands

Each point writes its own workdir (metrics as TensorBoard events + JSONL); compare the final
validation losses across points.
"""

import itertools

BASE_CONFIG = 'configs/demo.py:steps=100'


def get_sweep():
    return [
        {'optimizer.learning_rate': lr, 'optimizer.warmup_steps': warmup, 'train.seed': seed}
        for lr, warmup, seed in itertools.product((3e-4, 1e-3, 2e-3), (10, 30), (0, 1, 2))
    ]
