from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError

from ftsweep.config import ConfigError, LoraMethodConfig, TrainConfig, validate
from tests.conftest import CONF_DIR, compose_cfg

REQUIRED = {"local": ["data.train_file=x.csv"], "hub": ["data.path=imdb"]}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "method", "optimizer", "data"])
def test_every_shipped_option_composes_and_validates(group):
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = validate(compose_cfg(f"{group}={option}", *REQUIRED.get(option, [])))
        assert isinstance(cfg, TrainConfig)
        assert getattr(cfg, group).name == option


def test_lr_defaults_to_the_method_and_an_explicit_lr_wins():
    full, lora, head = (validate(compose_cfg(f"method={m}")) for m in ("full", "lora", "head"))
    assert full.lr == 5e-5 and lora.lr == 5e-4 and head.lr == 1e-3
    assert validate(compose_cfg("method=lora", "lr=2e-4")).lr == 2e-4


def test_lora_options_are_overridable():
    cfg = validate(compose_cfg("method=lora", "method.r=16", "method.target_modules=[query,key,value]"))
    assert isinstance(cfg.method, LoraMethodConfig)
    assert cfg.method.r == 16 and cfg.method.target_modules == ["query", "key", "value"]


@pytest.mark.parametrize("override, message", [
    ("lr=-1", "lr must be > 0"),
    ("lr=0", "lr must be > 0"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("epochs=0", "epochs must be >= 1"),
    ("max_steps=0", "max_steps must be >= 1"),
    ("data.max_length=4", "data.max_length must be >= 8"),
    ("optimizer.warmup_ratio=1.5", "warmup_ratio"),
    ("method=lora method.r=0", "method.r must be >= 1"),
    ("device=tpu", "device must be"),
    ("seed=-1", r"seed must be in \[0, 2\*\*32\)"),
    ("seed=4294967296", r"seed must be in \[0, 2\*\*32\)"),
    ("data.split_seed=-1", r"data.split_seed must be in \[0, 2\*\*32\)"),
    ("data=local data.train_file=x.csv data.text_column=label", "data.text_column and data.label_column are both 'label'"),
])
def test_out_of_range_values_fail_validation(override, message):
    cfg = compose_cfg(*override.split())
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_missing_required_value_is_a_config_error():
    with pytest.raises(ConfigError, match="train_file"):
        validate(compose_cfg("data=local"))


@pytest.mark.parametrize("override", ["lrr=1", "method=lorra", "data.colum=text", "batch_size=abc"])
def test_unknown_keys_options_and_wrong_types_fail_at_compose_time(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValueError)):
        compose_cfg(override)
