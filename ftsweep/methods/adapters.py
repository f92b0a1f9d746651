"""peft methods: an adapter trains on a frozen base, with the classifier head (task_type SEQ_CLS puts the head in
modules_to_save). peft, transformers and torch are imported inside the functions that use them: this module is
imported with the config schemas, before the command line composes, and peft alone takes seconds to import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Optional

from ftsweep.errors import ModelError, check_config, first_line
from ftsweep.methods.registry import HEAD_MODULES, MethodConfig, register_method, spec

if TYPE_CHECKING:
    from torch import nn

# The attention query and value projections of each architecture: LoRA's targets when method.target_modules is
# null. (peft has its own table, without MPNet.)
ATTENTION_QV = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "mpnet": ["q", "v"],
    "distilbert": ["q_lin", "v_lin"],
}


def _peft(model: nn.Module, peft_config, what: str) -> nn.Module:
    # peft is imported here, not at the top: composing a config imports this module (see its docstring)
    from peft import get_peft_model

    try:
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        raise ModelError(f"{what}: {first_line(exc)}") from exc


def target_modules(model: nn.Module, cfg) -> list[str]:
    """method.target_modules, else the method's default for the model's architecture (its default_targets)."""
    if cfg.target_modules:
        return list(cfg.target_modules)
    kind = getattr(model.config, "model_type", "?")
    defaults = spec(cfg).default_targets
    if kind not in defaults:
        raise ModelError(
            f"method.target_modules is null and ftsweep does not know {kind}'s attention layers; "
            f"name them, e.g. method.target_modules=[q_proj,v_proj]"
        )
    return list(defaults[kind])


def _rank_part(cfg) -> str:
    return f"r{cfg.r}"


# --------------------------------------------------------------------------- lora
@dataclass
class LoraMethodConfig(MethodConfig):
    lr: float = 5e-4
    lr_range: List[float] = field(default_factory=lambda: [1e-4, 3e-3])
    r: int = 8
    lora_alpha: int = 16
    # peft's default; 0.1 cost 12 % of the CPU step for no accuracy (benchmarks/README.md, "LoRA")
    lora_dropout: float = 0.0
    # null: the model's attention query and value projections (ATTENTION_QV: query/value on BERT, q/v on MPNet)
    target_modules: Optional[List[str]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(self.r >= 1, f"method.r must be >= 1, got {self.r}")
        check_config(self.lora_alpha > 0, f"method.lora_alpha must be > 0, got {self.lora_alpha}")
        check_config(0.0 <= self.lora_dropout < 1.0, f"method.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        check_config(
            self.target_modules is None or len(self.target_modules) > 0,
            "method.target_modules must name at least one module, or be null",
        )


def _lora(model: nn.Module, cfg: LoraMethodConfig, total_steps: int) -> nn.Module:
    # peft is imported here, not at the top: composing a config imports this module (see its docstring)
    from peft import LoraConfig, TaskType

    targets = target_modules(model, cfg)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=cfg.r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
    )
    return _peft(model, lora, f"method.target_modules={targets}")


register_method(
    "lora",
    LoraMethodConfig,
    _lora,
    peft=True,
    default_targets=ATTENTION_QV,
    run_name_part=_rank_part,
    ranks=lambda cfg: {"method.r": cfg.r},
)


# --------------------------------------------------------------------------- qlora
@dataclass
class QLoraMethodConfig(LoraMethodConfig):
    """LoRA on a 4-bit (bitsandbytes) base model: CUDA only."""

    lora_dropout: float = 0.1
    quant_type: str = "nf4"  # nf4 or fp4
    double_quant: bool = True  # quantise the quantisation constants too (about 0.4 bit a weight less)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(
            self.quant_type in ("nf4", "fp4"), f"method.quant_type must be nf4 or fp4, got '{self.quant_type}'"
        )


def _four_bit(cfg: QLoraMethodConfig) -> dict:
    """from_pretrained kwargs that load the base in 4 bits, on the current CUDA device."""
    # torch and transformers here, not at the top: composing a config imports this module (see its docstring)
    import torch
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=cfg.quant_type,
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=list(HEAD_MODULES),
        ),  # the head trains, so it stays in full precision
        "device_map": {"": torch.cuda.current_device()},
    }


def _qlora(model: nn.Module, cfg: QLoraMethodConfig, total_steps: int) -> nn.Module:
    # peft is imported here, not at the top: composing a config imports this module (see its docstring)
    from peft import prepare_model_for_kbit_training

    return _lora(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False), cfg, total_steps)


register_method(
    "qlora",
    QLoraMethodConfig,
    _qlora,
    peft=True,
    default_targets=ATTENTION_QV,
    run_name_part=_rank_part,
    ranks=lambda cfg: {"method.r": cfg.r},
    load_kwargs=_four_bit,
    cuda_only="4-bit bitsandbytes kernels",
    requires={"bitsandbytes": "pip install 'ftsweep[gpu]'"},
    instead="lora",
)


# --------------------------------------------------------------------------- adalora
@dataclass
class AdaLoraMethodConfig(LoraMethodConfig):
    """AdaLoRA: starts at init_r and prunes to an average of target_r. The schedule is in
    fractions of the run's optimizer steps, so it fits whatever max_steps/epochs give."""

    lora_dropout: float = 0.1
    target_modules: Optional[List[str]] = field(default_factory=lambda: ["query", "key", "value"])
    init_r: int = 12
    target_r: int = 8
    tinit_ratio: float = 0.1  # no pruning during the first 10 % of steps
    tfinal_ratio: float = 0.2  # the final 20 % of steps keep the budget fixed
    delta_t: int = 10  # steps between two budget re-allocations

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(
            1 <= self.target_r <= self.init_r,
            f"method.target_r must be in [1, init_r={self.init_r}], got {self.target_r}",
        )
        check_config(
            self.tinit_ratio >= 0 and self.tfinal_ratio >= 0 and self.tinit_ratio + self.tfinal_ratio < 1,
            "method.tinit_ratio + method.tfinal_ratio must be < 1",
        )
        check_config(self.delta_t >= 1, f"method.delta_t must be >= 1, got {self.delta_t}")


def _adalora(model: nn.Module, cfg: AdaLoraMethodConfig, total_steps: int) -> nn.Module:
    # peft is imported here, not at the top: composing a config imports this module (see its docstring)
    from peft import AdaLoraConfig, TaskType

    tinit, tfinal = int(cfg.tinit_ratio * total_steps), int(cfg.tfinal_ratio * total_steps)
    targets = target_modules(model, cfg)
    ada = AdaLoraConfig(
        task_type=TaskType.SEQ_CLS,
        init_r=cfg.init_r,
        target_r=cfg.target_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        total_step=total_steps,
        tinit=tinit,
        tfinal=tfinal,
        deltaT=cfg.delta_t,
    )
    return _peft(model, ada, f"method.target_modules={targets}")


register_method(
    "adalora",
    AdaLoraMethodConfig,
    _adalora,
    peft=True,
    default_targets=ATTENTION_QV,
    run_name_part=_rank_part,
    ranks=lambda cfg: {"method.r": cfg.r, "method.init_r": cfg.init_r},
    no_checkpoint="its rank allocator's state is not in the checkpoint, so a resumed run would not be the same run",
    instead="lora",
)


# --------------------------------------------------------------------------- ia3
@dataclass
class IA3MethodConfig(MethodConfig):
    lr: float = 5e-3  # scaling vectors need a high rate
    lr_range: List[float] = field(default_factory=lambda: [1e-3, 3e-2])
    # BERT-family module names; "output.dense" matches both the attention and the feed-forward output.
    target_modules: List[str] = field(default_factory=lambda: ["key", "value", "output.dense"])
    feedforward_modules: List[str] = field(default_factory=lambda: ["output.dense"])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(len(self.target_modules) > 0, "method.target_modules must name at least one module")
        check_config(
            set(self.feedforward_modules) <= set(self.target_modules),
            "method.feedforward_modules must be a subset of method.target_modules",
        )


def _ia3(model: nn.Module, cfg: IA3MethodConfig, total_steps: int) -> nn.Module:
    # peft is imported here, not at the top: composing a config imports this module (see its docstring)
    from peft import IA3Config, TaskType

    ia3 = IA3Config(
        task_type=TaskType.SEQ_CLS,
        target_modules=list(cfg.target_modules),
        feedforward_modules=list(cfg.feedforward_modules),
    )
    return _peft(model, ia3, f"method.target_modules={list(cfg.target_modules)}")


register_method("ia3", IA3MethodConfig, _ia3, peft=True)


# --------------------------------------------------------------------------- prompt tuning
@dataclass
class PromptTuningMethodConfig(MethodConfig):
    lr: float = 1e-2
    lr_range: List[float] = field(default_factory=lambda: [1e-3, 5e-2])
    num_virtual_tokens: int = 20  # soft-prompt vectors prepended to every input

    def __post_init__(self) -> None:
        super().__post_init__()
        check_config(
            self.num_virtual_tokens >= 1, f"method.num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}"
        )


def _prompt_tuning(model: nn.Module, cfg: PromptTuningMethodConfig, total_steps: int) -> nn.Module:
    # peft is imported here, not at the top: composing a config imports this module (see its docstring)
    from peft import PromptTuningConfig, TaskType

    prompt = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg.num_virtual_tokens)
    return _peft(model, prompt, "method=prompt_tuning")


register_method(
    "prompt_tuning",
    PromptTuningMethodConfig,
    _prompt_tuning,
    peft=True,
    extra_positions=lambda cfg: cfg.num_virtual_tokens,
)
