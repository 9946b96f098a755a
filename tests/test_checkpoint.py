"""Orbax checkpoints: restore on another mesh, shape errors, start-up order, kill during save."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from codellm_jax import checkpoint as ckpt_lib
from codellm_jax import config as config_lib
from codellm_jax import experiment, synthetic_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(mesh_shape=(1, -1, 1), d_model=32):
    cfg = config_lib.base_config()
    cfg.model = dict(
        vocab_size=64,
        d_model=d_model,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        d_ff=64,
        max_seq_len=32,
    )
    cfg.mesh.shape = mesh_shape
    cfg.train.data_source = 'synthetic'
    cfg.train.seq_len = 16
    return cfg


def _state(cfg, seed=0):
    exp, tx, _ = experiment.build(cfg)
    init_state, from_params = experiment.state_initializers(exp, tx)
    state = init_state()
    # Make the optimizer state non-trivial so its restore is really checked.
    state = state.replace(opt_state=jax.tree.map(lambda x: x + 1, state.opt_state))
    return exp, state, init_state, from_params


def _assert_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def test_save_on_one_mesh_restore_on_another(tmp_path):
    exp_a, state, _, _ = _state(_config((1, 8, 1)))  # FSDP over 8 devices
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), ckpt_lib.CheckpointConfig())
    it = synthetic_data.make_iterator('decoder', 64, {'input': 16}, 2, seed=0)
    next(it), next(it)
    ckpt.save(3, state, it, {'note': 'x'})
    ckpt.wait()
    expected_next = next(it)

    exp_b, _, _, _ = _state(_config((2, 2, 2)))  # data x fsdp x tensor
    it_b = synthetic_data.make_iterator('decoder', 64, {'input': 16}, 2, seed=0)
    restored = ckpt.restore(3, exp_b.abstract_state, it_b)
    ckpt.close()
    _assert_equal(restored, state)
    # Leaves come back with the NEW mesh's shardings, optax structure intact.
    want = jax.tree.leaves(exp_b.state_shardings)
    got = [x.sharding for x in jax.tree.leaves(restored)]
    assert got == want
    assert type(restored.opt_state) is type(state.opt_state)
    q_a = exp_a.state_shardings.params['layers']['attn']['q']['kernel']
    q_b = restored.params['layers']['attn']['q']['kernel'].sharding
    assert q_b.mesh.shape == {'data': 2, 'fsdp': 2, 'tensor': 2} and q_b != q_a
    _assert_equal(next(it_b), expected_next)  # the data position came back too
    assert ckpt_lib.Checkpointer(str(tmp_path), ckpt_lib.CheckpointConfig()).config(3) == {
        'note': 'x'
    }


def test_incompatible_model_config_names_shapes(tmp_path):
    _, state, _, _ = _state(_config(d_model=32))
    ckpt = ckpt_lib.Checkpointer(str(tmp_path), ckpt_lib.CheckpointConfig())
    ckpt.save(1, state)
    ckpt.wait()
    exp_big, _, _, _ = _state(_config(d_model=48))
    with pytest.raises(ValueError, match=r'incompatible model config') as e:
        ckpt.restore(1, exp_big.abstract_state)
    assert 'embed/embedding: checkpoint (64, 32), model (64, 48)' in str(e.value)
    with pytest.raises(ValueError, match=r'embed/embedding'):
        ckpt_lib.restore_params(str(tmp_path), exp_big.abstract_state.params)
    ckpt.close()


def test_start_up_order(tmp_path):
    exp, state, init_state, from_params = _state(_config())
    cfg = ckpt_lib.CheckpointConfig()
    kw = dict(
        abstract_state=exp.abstract_state, init_state=init_state, state_from_params=from_params
    )

    # 4. Nothing anywhere: scratch.
    empty = ckpt_lib.Checkpointer(str(tmp_path / 'empty'), cfg)
    s, source = ckpt_lib.restore_or_initialize(empty, cfg, **kw)
    assert source == 'from scratch' and int(s.step) == 0

    # 3. Pretrained / HF directory (interop format).
    from codellm_jax.interop import pretrained

    trained = jax.tree.map(lambda x: x * 2, state.params)
    pretrained.save_pretrained(str(tmp_path / 'hf'), 'decoder', exp.model_cfg, trained)
    c3 = ckpt_lib.CheckpointConfig(init_from_pretrained=str(tmp_path / 'hf'))
    s, source = ckpt_lib.restore_or_initialize(empty, c3, **kw)
    assert source.startswith('params from pretrained')
    _assert_equal(s.params, trained)
    assert int(s.step) == 0

    # 2. An explicit checkpoint beats the pretrained dir: params only, fresh optimizer.
    run = ckpt_lib.Checkpointer(str(tmp_path / 'run' / 'checkpoints'), cfg)
    stepped = state.replace(step=state.step + 7, params=jax.tree.map(lambda x: x + 3, state.params))
    run.save(7, stepped)
    run.close()
    c2 = ckpt_lib.CheckpointConfig(
        init_from=str(tmp_path / 'run'), init_from_pretrained=str(tmp_path / 'hf')
    )
    s, source = ckpt_lib.restore_or_initialize(empty, c2, **kw)
    assert source.startswith('params from checkpoint')
    _assert_equal(s.params, stepped.params)
    assert int(s.step) == 0
    _assert_equal(s.opt_state, init_state().opt_state)

    # 1. The workdir's own latest checkpoint beats everything (full state).
    own = ckpt_lib.Checkpointer(str(tmp_path / 'own'), cfg)
    own.save(5, stepped)
    own.wait()
    s, source = ckpt_lib.restore_or_initialize(own, c2, **kw)
    assert source.startswith('resumed from') and int(s.step) == int(stepped.step)
    _assert_equal(s, stepped)
    own.close()
    empty.close()


_KILL_DURING_SAVE = textwrap.dedent(
    """
    import sys, time
    import jax, jax.numpy as jnp
    from codellm_jax import checkpoint as c, train_state as ts
    ckpt = c.Checkpointer(sys.argv[1], c.CheckpointConfig(async_save=True))
    small = ts.TrainState(step=jnp.asarray(1), params={'w': jnp.ones((4,))}, opt_state={})
    ckpt.save(1, small)
    ckpt.wait()
    # ~200 MB: the background write takes long enough to be killed in the middle.
    big = ts.TrainState(step=jnp.asarray(2),
                        params={f'w{i}': jnp.full((1024, 1024 * 5), i, jnp.float32)
                                for i in range(10)}, opt_state={})
    ckpt.save(2, big)
    print('SAVING', flush=True)
    time.sleep(600)
    """
)


def test_kill_during_save_never_leaves_a_broken_latest(tmp_path):
    directory = str(tmp_path / 'ckpt')
    proc = subprocess.Popen(
        [sys.executable, '-c', _KILL_DURING_SAVE, directory],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=''),
    )
    assert proc.stdout.readline().strip() == b'SAVING'
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whatever the kill interrupted, the latest step is a complete one and restores.
    ckpt = ckpt_lib.Checkpointer(directory, ckpt_lib.CheckpointConfig())
    latest = ckpt.latest_step()
    assert latest in (1, 2)
    entries = os.listdir(directory)
    if latest == 1:  # killed mid-write: step 2 exists only as orbax's temporary directory
        assert '2' not in entries
        assert any(e.startswith('2.') and 'tmp' in e for e in entries), entries
    from codellm_jax import train_state as ts

    n = 1 if latest == 1 else 10
    target = jax.eval_shape(
        lambda: ts.TrainState(
            step=jax.numpy.asarray(0),
            params={'w': jax.numpy.ones((4,))}
            if latest == 1
            else {f'w{i}': jax.numpy.ones((1024, 1024 * 5)) for i in range(n)},
            opt_state={},
        )
    )
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), target)
    restored = ckpt.restore(latest, target)
    assert int(restored.step) == latest
    ckpt.close()
