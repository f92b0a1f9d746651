"""Evaluation, and the precision both training and evaluation run in."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from ftsweep import interrupt
from ftsweep.config import Precision
from ftsweep.metrics import classification_scores, confusion_matrix


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def resolve_precision(precision: Precision, device: torch.device, evaluating: bool = False) -> Precision:
    """`auto`: bf16 autocast where the device computes bf16 natively, else fp32; on a CPU, fp32 for training
    and bf16 for eval only. bf16 training missed the parity rule on the CPU (LoRA on the study's slice, 3 seeds:
    0.6 points below fp32, 0.5 allowed), while bf16 eval gave the same predictions as fp32 on 99.8-100 % of
    examples of three fp32-trained models (benchmarks/README.md, "bf16 parity")."""
    if precision != Precision.auto:
        return precision
    if not native_bf16(device) or (device.type == "cpu" and not evaluating):
        return Precision.fp32
    return Precision.bf16


def precision_tag(precision: Precision, device: torch.device) -> str:
    """What ran, for the run's `precision` tag: `fp32`, `bf16`, or `fp32+bf16-eval` when the two differ."""
    train, evaluation = resolve_precision(precision, device), resolve_precision(precision, device, evaluating=True)
    return train.value if train == evaluation else f"{train.value}+{evaluation.value}-eval"


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 is native here. CUDA: Ampere (8.0) and later; earlier cards only emulate it, slower than
    fp32. CPU: AMX or AVX512-BF16, detected at run time; there a training step ran 1.5x and eval 2.6x as fast
    as fp32; elsewhere oneDNN emulates bf16."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so looked up with a default
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def autocast(device: torch.device, precision: Precision, evaluating: bool = False):
    precision = resolve_precision(precision, device, evaluating)
    dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.inference_mode()
def evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, num_labels: int, precision: Precision = Precision.auto
) -> dict:
    """Accuracy, macro F1 and mean loss over the whole loader, the confusion matrix, and per example (in the
    loader's order) the label and the class probabilities, with `order`: the examples' indices in the eval split
    (None for a loader that does not say, e.g. a list of batches)."""
    was_training = model.training
    model.eval()
    preds, labels, probs, loss_sum, n = [], [], [], torch.zeros((), device=device), 0
    for batch in loader:
        interrupt.check()
        batch = to_device(batch, device)
        with autocast(device, precision, evaluating=True):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss_sum += nn.functional.cross_entropy(logits.float(), batch["labels"], reduction="sum")
        preds.append(logits.argmax(-1).cpu())
        probs.append(torch.softmax(logits.float(), dim=-1).cpu())
        labels.append(batch["labels"].cpu())
        n += batch["labels"].numel()
    model.train(was_training)
    cm = confusion_matrix(torch.cat(labels).numpy(), torch.cat(preds).numpy(), num_labels)
    scores = classification_scores(cm)
    return {
        "accuracy": scores["accuracy"],
        "f1_macro": scores["f1_macro"],
        "loss": float(loss_sum.item() / max(n, 1)),
        "confusion_matrix": cm,
        "labels": torch.cat(labels).numpy(),
        "probs": torch.cat(probs).numpy(),
        "order": _order_of(loader),
    }


def _order_of(loader) -> list[int] | None:
    """The eval split's indices in the order the loader yields them (its sampler, when it is a plain list)."""
    sampler = getattr(loader, "sampler", None)
    return [int(i) for i in sampler] if isinstance(sampler, (list, tuple)) else None
