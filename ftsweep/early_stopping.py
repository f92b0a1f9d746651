"""Early stopping: a run stopped against its own past, its best weights restored."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn


class EarlyStopping:
    """Stop a run against its own past: after `patience` evaluations without improvement on `metric`. The
    weights of the best evaluation are kept (trainable tensors only: the rest never change) and restored at
    the end, so the final eval and the saved model are the best ones. Pruning, by contrast, stops a trial
    against other trials."""

    def __init__(self, patience: Optional[int], metric: str = "eval/accuracy", min_delta: float = 0.0):
        self.patience, self.key, self.min_delta = patience, metric.split("/", 1)[1], min_delta
        self.sign = -1.0 if metric == "eval/loss" else 1.0
        self.best: Optional[float] = None
        self.best_step, self.bad = -1, 0
        self.best_eval: dict[str, Any] = {}
        self.best_weights: dict[str, torch.Tensor] = {}

    def update(self, model: nn.Module, step: int, evaluation: dict) -> bool:
        """Record an evaluation; True when training should stop."""
        value = self.sign * evaluation[self.key]
        if self.best is None or value > self.best + self.min_delta:
            self.best, self.best_step, self.bad, self.best_eval = value, step, 0, evaluation
            if self.patience is not None:
                self.best_weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            return False
        self.bad += 1
        return self.patience is not None and self.bad >= self.patience

    def restore(self, model: nn.Module, last_eval_step: int) -> tuple[int, Optional[dict]]:
        """Put the best evaluation's weights back. Returns the step whose weights the model now has, and that
        step's evaluation when it is not the last one: it becomes the final one (same weights, same eval)."""
        if self.patience is None or self.best_step in (-1, last_eval_step):
            return last_eval_step, None
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in self.best_weights:
                    param.copy_(self.best_weights[name])
        return self.best_step, self.best_eval

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad": self.bad,
            "best_eval": self.best_eval,
            "best_weights": self.best_weights,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad = state["best"], state["best_step"], state["bad"]
        self.best_eval, self.best_weights = state["best_eval"], state["best_weights"]
