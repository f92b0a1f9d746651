"""The optimizer and its learning-rate schedule, built from `optimizer.*`."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import get_scheduler

from ftsweep.config import OptimizerConfig


def build_optimizer(model: nn.Module, cfg: OptimizerConfig, lr: float, fused: bool = True) -> torch.optim.Optimizer:
    # No weight decay on biases and LayerNorm weights, as in BERT's recipe.
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    # fused: one kernel over all tensors. On MiniLM (CPU) its step took 14 ms against foreach's 64-74 ms
    # (benchmarks/README.md, "before/after"); torch implements it for CPU and CUDA floating-point tensors.
    impl = {"fused": True} if fused else {"foreach": True}
    beta1, beta2 = cfg.betas  # two: OptimizerConfig checks it
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=cfg.eps, **impl)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimizerConfig, total_steps: int):
    warmup = int(cfg.warmup_ratio * total_steps)
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.scheduler.value]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def total_optimizer_steps(batches_per_epoch: int, grad_accum_steps: int, epochs: int, max_steps: int | None) -> int:
    per_epoch = math.ceil(batches_per_epoch / grad_accum_steps)
    total = per_epoch * epochs
    return min(total, max_steps) if max_steps else total
