"""Config helpers: arg parsing, ConfigDict -> dataclass boundary, overrides, loading."""

import dataclasses

import ml_collections
import pytest
import tiny_models

from codellm_jax import config as config_lib
from codellm_jax.models import model_config as mc


def test_parse_arg_literals_and_strings():
    out = config_lib.parse_arg('size=8b,scan=True,layers=4', size='tiny', scan=False, layers=2)
    assert out == {'size': '8b', 'scan': True, 'layers': 4}


def test_parse_arg_unknown_key_is_named():
    with pytest.raises(ValueError, match="Unknown config arg 'sise'"):
        config_lib.parse_arg('sise=8b', size='tiny')


def test_parse_arg_rejects_non_key_value():
    with pytest.raises(ValueError, match='not key=value'):
        config_lib.parse_arg('8b', size='tiny')


def _decoder_dict(**kw):
    d = dict(tiny_models.DECODER, rope_scaling=dict(factor=8.0))
    d.update(kw)
    return d


def test_to_dataclass_builds_nested_dataclass():
    cfg = config_lib.to_dataclass(mc.DecoderConfig, ml_collections.ConfigDict(_decoder_dict()))
    assert isinstance(cfg.rope_scaling, mc.RopeScaling)
    assert cfg.rope_scaling.factor == 8.0
    assert dataclasses.replace(cfg, num_layers=3).num_layers == 3


def test_to_dataclass_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['d_modle'\]"):
        config_lib.to_dataclass(mc.DecoderConfig, _decoder_dict(d_modle=3))


def test_kv_heads_must_divide_heads():
    with pytest.raises(ValueError, match='not divisible by num_kv_heads'):
        config_lib.to_dataclass(mc.DecoderConfig, _decoder_dict(num_kv_heads=3))


def test_model_config_dispatches_on_kind():
    cfg = config_lib.base_config()
    cfg.model = ml_collections.ConfigDict(_decoder_dict())
    assert isinstance(config_lib.model_config(cfg), mc.DecoderConfig)
    cfg.model_kind = 'rnn'
    with pytest.raises(ValueError, match="Unknown model_kind 'rnn'"):
        config_lib.model_config(cfg)


def test_apply_overrides_checks_keys_and_types():
    cfg = config_lib.base_config()
    cfg.train = ml_collections.ConfigDict({'learning_rate': 1e-3, 'steps': 10})
    cfg.lock()
    out = config_lib.apply_overrides(cfg, {'train.learning_rate': 3e-4})
    assert out.train.learning_rate == 3e-4 and cfg.train.learning_rate == 1e-3
    with pytest.raises(KeyError, match="Unknown config key 'train.lr'"):
        config_lib.apply_overrides(cfg, {'train.lr': 3e-4})
    with pytest.raises(KeyError, match="Unknown config key 'trian'"):
        config_lib.apply_overrides(cfg, {'trian.steps': 3})
    with pytest.raises(TypeError, match="'train.steps'"):
        config_lib.apply_overrides(cfg, {'train.steps': 'many'})


def test_load_config_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        config_lib.load_config(str(tmp_path / 'nope.py'))
    bad = tmp_path / 'bad.py'
    bad.write_text('X = 1\n')
    with pytest.raises(ValueError, match='no get_config'):
        config_lib.load_config(str(bad))


def test_load_config_passes_arg(tmp_path):
    f = tmp_path / 'c.py'
    f.write_text(
        'import ml_collections\n'
        'def get_config(arg=None):\n'
        '    return ml_collections.ConfigDict({"arg": arg or ""})\n'
    )
    assert config_lib.load_config(f'{f}:size=8b').arg == 'size=8b'
    assert config_lib.load_config(str(f)).arg == ''
