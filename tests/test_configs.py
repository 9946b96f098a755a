"""Every `configs/*.py` builds and yields a valid model dataclass; llama3 presets are exact."""

import importlib.util
import pathlib

import pytest

from codellm_jax import config as config_lib
from codellm_jax.models import model_config as mc

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob('*.py') if not p.name.startswith('_'))


def _load(path):
    spec = importlib.util.spec_from_file_location(f'cfg_{path.stem}', path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_config_dir_is_not_empty():
    assert any(p.name == 'llama3.py' for p in CONFIG_FILES)


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: p.name)
def test_every_config_builds(path):
    mod = _load(path)
    assert mod.__doc__ and 'python' in mod.__doc__, f'{path.name}: docstring needs the run command'
    cfg = mod.get_config()
    model = config_lib.model_config(cfg)
    assert isinstance(model, mc.DecoderConfig | mc.EncoderDecoderConfig)
    assert cfg.mesh.shape and cfg.mesh.rules


@pytest.mark.parametrize(
    'size, shape',
    [
        ('tiny', (64, 2, 4, 2, 128, 256)),
        ('demo', (512, 6, 8, 4, 1408, 8192)),
        ('8b', (4096, 32, 32, 8, 14336, 128256)),
        ('70b', (8192, 80, 64, 8, 28672, 128256)),
    ],
)
def test_llama3_presets(size, shape):
    model = config_lib.model_config(_load(CONFIG_DIR / 'llama3.py').get_config(f'size={size}'))
    got = (
        model.d_model,
        model.num_layers,
        model.num_heads,
        model.num_kv_heads,
        model.d_ff,
        model.vocab_size,
    )
    assert got == shape
    assert model.head_dim * model.num_heads == model.d_model
    if size in ('8b', '70b'):
        assert model.rope_theta == 500000.0 and model.rope_scaling.factor == 8.0
        assert model.max_seq_len == 131072 and not model.tie_embeddings


def test_llama3_args_and_errors():
    mod = _load(CONFIG_DIR / 'llama3.py')
    model = config_lib.model_config(mod.get_config('size=demo,scan=False,remat=dots'))
    assert not model.scan_layers and model.remat_policy == 'dots'
    with pytest.raises(ValueError, match='Unknown size'):
        mod.get_config('size=13b')
    with pytest.raises(ValueError, match='Unknown config arg'):
        mod.get_config('sise=8b')
