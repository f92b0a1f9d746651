"""Search spaces of the presets that Optuna's override syntax cannot express (conditional parameters).

Used as `hydra.sweeper.custom_search_space: ftsweep.sweep.presets.pareto_space`: fn(cfg, trial)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from optuna.trial import Trial

METHODS = ("full", "lora", "head")


def method_lr_range(cfg: DictConfig, method: str) -> tuple[float, float]:
    """The lr bounds of `method`: an explicit `method.lr_range=` on the command line, else the method's YAML."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from ftsweep.config import CONF_DIR

    for override in OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task)):
        if override.get_key_element().lstrip("+") == "method.lr_range" and not override.is_sweep_override():
            low, high = override.value()
            return float(low), float(high)
    low, high = OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml").lr_range
    return float(low), float(high)


def pareto_space(cfg: DictConfig, trial: Trial) -> None:
    """Method, its lr, batch size, and the LoRA rank only where the method is LoRA."""
    method = trial.suggest_categorical("method", list(METHODS))
    trial.suggest_float("lr", *method_lr_range(cfg, method), log=True)
    trial.suggest_categorical("batch_size", [8, 16, 32])
    if method == "lora":
        trial.suggest_categorical("method.r", [4, 8, 16])


STUDY_LR_FACTORS = (0.4, 1.0, 1.6)  # evenly spaced: a float step is how a brute-force lr may depend on the method


def method_default_lr(method: str) -> float:
    from ftsweep.config import CONF_DIR

    return float(OmegaConf.load(CONF_DIR / "method" / f"{method}.yaml").lr)


def study_space(cfg: DictConfig, trial: Trial) -> None:
    """`make study`: full fine-tuning and LoRA, each at 0.4x, 1x and 1.6x its own default lr, x batch size
    8/16/32. With sampler=bruteforce every one of the 18 combinations runs once."""
    method = trial.suggest_categorical("method", ["full", "lora"])
    low, mid, high = (float(f"{f * method_default_lr(method):.6g}") for f in STUDY_LR_FACTORS)
    trial.suggest_float("lr", low, high, step=float(f"{mid - low:.6g}"))
    trial.suggest_categorical("batch_size", [8, 16, 32])
