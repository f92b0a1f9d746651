"""Keeping a fine-tuned model: a folder on disk, an MLflow model that MLflow itself loads and serves, and a
registered version with the alias `best`.

A full fine-tune is saved whole. LoRA and the other peft methods keep their adapter only (and the head),
with the path of the base folder they were trained on; MLflow's transformers flavor records that path, so
`mlflow.pyfunc.load_model` and `mlflow models serve` still load the model in one call. The tiny test model
has no weights folder of its own, so its random base is written beside the run first.

A kept model carries the model card of the folder it was trained from (its README.md, with the license), as
MLflow would fetch it from the hub for a hub model; a folder without a card gets none, quietly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import mlflow
import peft
import torch
import transformers
from huggingface_hub import ModelCard
from mlflow.exceptions import MlflowException
from mlflow.models import get_model_info
from mlflow.tracking import MlflowClient
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import ftsweep
from ftsweep.artifacts import no_space, write_json
from ftsweep.errors import quiet_logs

MODEL_NAME = "model"  # the logged model's name in its run
ALIAS = "best"
CARD = "README.md"  # a Hugging Face model folder's model card: YAML metadata (license, ...), then text


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def base_folder(model) -> Optional[str]:
    """The local folder a peft model's base comes from (None for a full model)."""
    if not is_peft(model):
        return None
    return next(iter(model.peft_config.values())).base_model_name_or_path


def base_card(model) -> Optional[ModelCard]:
    """The model card of the folder a model was loaded from (an adapter's: its base's), when it declares a license:
    Hugging Face folders carry one, the shipped MiniLM and MPNet included. None for the tiny random model and for a
    folder without a card."""
    folder = base_folder(model) or getattr(model, "name_or_path", "")
    path = Path(folder).expanduser() / CARD if folder else None
    if path is None or not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):  # a README without metadata is no card (and huggingface_hub warns about it)
        return None
    try:
        card = ModelCard(text)
    except ValueError:  # a metadata block that is not YAML
        return None
    return card if getattr(card.data, "license", None) else None  # ModelCardData; typed as any CardData


def save_base(base_model, folder: Path) -> None:
    """Write a base model that exists only in memory (the tiny random BERT) and point its config at the folder,
    so that an adapter trained on it records where its base is."""
    base_model.save_pretrained(folder)
    base_model.config._name_or_path = str(folder.resolve())
    base_model.name_or_path = str(folder.resolve())


def set_length(tokenizer, max_length: int, tail: bool) -> None:
    """Make the kept tokenizer cut texts as training did: to max_length tokens, specials included, keeping the
    head (or the tail). It is what MLflow's serving pipeline uses; ftsweep's head_tail truncation has no
    tokenizer equivalent, so a served head_tail model keeps the head (predict cuts exactly: `cut_of`)."""
    tokenizer.model_max_length = max_length
    tokenizer.truncation_side = "left" if tail else "right"


EXAMPLES = "input_example.json"
CUT = "ftsweep_cut.json"  # how training cut texts: {"max_length": 128, "truncation": "head_tail"}


def save_folder(model, tokenizer, folder: Path, examples: list[str], cut: dict) -> Path:
    """The model (or its adapter), its tokenizer, two example inputs and how texts were cut, as a folder.

    Written whole: into a temporary folder beside it, then swapped in, so that a full disk leaves the folder
    it would have replaced as it was (and raises DiskFullError naming the folder and the space needed)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notices inside peft's save
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        card = base_card(model)
        if card is not None and not (tmp / CARD).exists():  # peft writes its own card; an adapter's base keeps its
            card.save(tmp / CARD)  # so that the sweeper, logging this folder's model, finds its card and license
        write_json(tmp / EXAMPLES, list(examples[:2]))
        write_json(tmp / CUT, cut)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = no_space(exc, folder, saved_bytes(model))
        if full is not None:
            raise full from exc
        raise
    return folder


def saved_bytes(model) -> int:
    """About what keeping this model writes: its adapter and head for a peft model, else every weight."""
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not is_peft(model))


def _json_in(folder: Path, name: str, default):
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.is_file() else default


def examples_of(folder: Path) -> list[str]:
    return _json_in(folder, EXAMPLES, [])


def cut_of(ref: str) -> Optional[dict]:
    """How a kept model's training cut texts: from its folder, or from the logged model's metadata."""
    folder = Path(ref).expanduser()
    if folder.is_dir() and not (folder / "MLmodel").is_file():
        return _json_in(folder, CUT, None)
    metadata = get_model_info(str(folder) if folder.is_dir() else ref).metadata or {}
    return metadata.get("cut")


def load_folder(folder: str | Path):
    """(model, tokenizer) from a folder written by save_folder: a full model or an adapter on its base."""
    return load_weights(folder), AutoTokenizer.from_pretrained(folder)


def load_weights(folder: str | Path):
    """The model alone, in eval mode, from a folder of weights (a full model, or an adapter whose config names its
    base): save_folder's, or MLflow's `model`/`peft` folder, which holds no tokenizer."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return AutoPeftModelForSequenceClassification.from_pretrained(folder).eval()
    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def log_model(
    tracking_uri: str, run_id: str, model, tokenizer, examples: list[str], label_names: list[str], cut: Optional[dict]
) -> str:
    """Log to an existing (possibly finished) run as an MLflow transformers model; returns its models:/ URI."""
    client = MlflowClient(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    # The logged model belongs to the run's experiment (without this MLflow files it under experiment 0).
    mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
    # Explicit requirements: MLflow's inferred default imports torchvision, which ftsweep does not need.
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"transformers=={transformers.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"ftsweep=={ftsweep.__version__}",
    ]
    extra: dict[str, Any] = {}
    if is_peft(model):
        requirements.append(f"peft=={peft.__version__}")
        extra["base_model_path"] = base_folder(model)
    # MLflow logs its own failed cleanup (a store too full to mark the model FAILED) as an ERROR with a
    # traceback; ftsweep reports the failure itself, in one line.
    with (
        warnings.catch_warnings(),
        quiet_logs("mlflow.transformers", "mlflow.models"),
        quiet_logs("mlflow.store.db.utils", level=logging.CRITICAL),
        _without_hub_lookups(),
    ):
        warnings.simplefilter("ignore", FutureWarning)
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=MODEL_NAME,
            task="text-classification",
            input_example=list(examples[:2]) or None,
            run_id=run_id,
            pip_requirements=requirements,
            metadata={"label_map": dict(enumerate(label_names)), "cut": cut},
            model_config={"truncation": True},  # served texts are cut to the trained length, like predict's
            model_card=base_card(model),  # given, MLflow asks the hub for no card and reads the license from it
            **extra,
        )
    return info.model_uri


# What MLflow says when the folder a model came from has no card: it asked the hub about a local path ("Repo id
# must be in the form ...") and found no license. The logged model's LICENSE.txt already says to check the base
# model's license; as two WARNINGs at the end of every run that keeps a model, new users read them as errors.
_HUB_LOOKUP_MESSAGES = (
    "The model card could not be retrieved from the hub",
    "Unable to find license information for this model",
)


def _not_a_hub_lookup(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(_HUB_LOOKUP_MESSAGES)


@contextlib.contextmanager
def _without_hub_lookups() -> Iterator[None]:
    logger = logging.getLogger("mlflow.transformers")
    logger.addFilter(_not_a_hub_lookup)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_hub_lookup)


def register(tracking_uri: str, model_uri: str, run_id: str, name: str) -> str:
    """Registered model `name` with the alias `best` on this run's model (a new version unless it already is);
    returns `models:/name@best`."""
    client = MlflowClient(tracking_uri)
    try:
        if client.get_model_version_by_alias(name, ALIAS).run_id == run_id:
            return f"models:/{name}@{ALIAS}"  # a resumed sweep whose best did not change
    except MlflowException:
        pass  # no such model or alias yet
    mlflow.set_tracking_uri(tracking_uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "registering model based on models:/m-... instead"
        version = mlflow.register_model(model_uri, name)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return f"models:/{name}@{ALIAS}"


def registered_name(experiment: str) -> str:
    return f"ftsweep-{experiment}"
