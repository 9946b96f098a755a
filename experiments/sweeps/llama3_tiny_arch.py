"""Architecture ablation at test size: kv heads (MHA / GQA / MQA) x tied embeddings.

    python -m experiments.sweep --sweep=experiments/sweeps/llama3_tiny_arch.py \
        --root=workdirs/sweeps/tiny_arch
"""

BASE_CONFIG = 'configs/llama3.py:size=tiny'


def get_sweep():
    return [
        {'model.num_kv_heads': kv, 'model.tie_embeddings': tied}
        for kv in (4, 2, 1)
        for tied in (False, True)
    ]
