"""FineTuneRecipe: one run, top to bottom, in torchtune's shape.

    recipe = FineTuneRecipe(cfg, output_dir, overrides, tracker, hooks)
    recipe.prepare()     # every check a user can fix, the data, the tokenizer: before the MLflow run exists
    recipe.start_run()   # the run exists from here, and always ends FINISHED, FAILED or KILLED
    recipe.setup()       # _setup_data, _setup_model, _setup_optimizer, _setup_lr_scheduler, _restore
    recipe.finish(recipe.train())
    recipe.cleanup()

State lives on the recipe. It knows nothing of Hydra or Optuna: a sweep reaches in only through `Hooks`
(ftsweep/hooks.py). The helper ranks of a distributed run build the same recipe with their process group
(`python -m ftsweep.recipe SPEC RANK`, started by ftsweep/distributed.py); they train in lockstep with rank 0
and log nothing.
"""

from __future__ import annotations

import gc
import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

import torch
from omegaconf import DictConfig, OmegaConf

from ftsweep import (
    baselines,
    batches,
    checkpoint,
    distributed,
    inputs,
    interrupt,
    keep,
    methods,
    orphans,
    outputs,
    preflight,
    spool,
)
from ftsweep import model as model_mod
from ftsweep.config import SaveModel, TinyModelConfig, TrainConfig, validate
from ftsweep.hooks import Hooks
from ftsweep.loop import FitResult, LogFn, LoopSettings, fit
from ftsweep.metrics import PeakMemory, memory_breakdown
from ftsweep.optim import build_optimizer, build_scheduler, total_optimizer_steps
from ftsweep.rng import seed_everything
from ftsweep.tracking import Tracker

log = logging.getLogger("ftsweep")
HELPER_EXIT_TAG = "ftsweep.helper_exit"  # a helper rank that exited non-zero after the results were in


@dataclass
class Loaders:
    train: Any
    eval: Any
    total_steps: int


class FineTuneRecipe:
    def __init__(
        self,
        cfg: DictConfig | TrainConfig,
        output_dir: str | Path | None = None,
        overrides: Optional[list[str]] = None,
        tracker: Optional[Tracker] = None,
        hooks: Optional[Hooks] = None,
        group: Optional[distributed.Group] = None,
    ):
        self.raw = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
        self.cfg = validate(cfg)
        self.resolved = cast(dict[str, Any], OmegaConf.to_container(self.raw, resolve=True, enum_to_str=True))
        self.overrides, self.hooks, self.group = overrides, hooks or Hooks(), group
        self.device = group.device if group else preflight.resolve_device(self.cfg.device, self.hooks.device_id)
        self.memory = PeakMemory(self.device).start()
        seed_everything(self.cfg.seed)
        self._tracker = tracker or (Tracker() if group is None else None)  # helper ranks log nothing
        self._out_dir = Path(output_dir) if output_dir else None  # else a temporary folder, made in prepare()
        self.ck: Optional[dict] = None  # the checkpoint this run resumes from
        self.ck_at: Optional[Path] = None  # where that checkpoint is
        self.resumed = False  # goes on in the interrupted run's own MLflow run
        self.model: Any = None
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._ck_tagged = False

    @property
    def main(self) -> bool:
        return self.group is None or self.group.main

    @property
    def tracker(self) -> Tracker:
        """The run's tracker. Only the helper ranks of a distributed run have none, and they never log."""
        assert self._tracker is not None, "a helper rank logs nothing"
        return self._tracker

    @property
    def out_dir(self) -> Path:
        """The run's folder: the caller's, else a temporary one made in prepare()."""
        assert self._out_dir is not None, "out_dir is set in prepare()"
        return self._out_dir

    @out_dir.setter
    def out_dir(self, value: Path) -> None:
        self._out_dir = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """Built in setup(), released in cleanup()."""
        assert self._optimizer is not None, "the optimizer is built in setup()"
        return self._optimizer

    # ---- before the run exists
    def prepare(self) -> None:
        """Every check a user can fix, then the data and the tokenizer; no weights are loaded."""
        tc, tracker = self.cfg, self.tracker
        tracker.experiment_id(tc.experiment_name or tc.data.name)  # a store that cannot work fails before data
        orphans.end_orphans(tracker.client)  # runs this host left RUNNING (killed, or a store too full to end)
        if tc.resume:
            self.ck_at = checkpoint.locate(tc.resume, tracker.client)
            self.ck = checkpoint.load(self.ck_at)
            checkpoint.check_same_config(self.ck, self.resolved, self.ck_at)
        preflight.check_settings(tc, self.device, self.hooks.device_id)
        self.splits, self.tokenizer = preflight.load_inputs(tc)
        self.out_dir = self._out_dir or Path(tempfile.mkdtemp(prefix="ftsweep-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        interrupt.check()  # a Ctrl-C during start-up stops here, before a run exists

    def start_run(self) -> None:
        """The MLflow run: the interrupted one again when resuming and the store still has it, else a new one."""
        tc, ck = self.cfg, self.ck
        self.resumed = ck is not None and self.tracker.resume(ck["run_id"])
        if not self.resumed:
            tags = inputs.start_tags(tc, self.device, self.hooks, self.splits)
            if ck is not None:
                tags["ftsweep.resumed_from"] = ck["run_id"]
            self.tracker.start(
                experiment=tc.experiment_name or tc.data.name,
                run_name=inputs.run_name(tc),
                tags=tags,
                parent_run_id=self.hooks.parent_run_id,
            )
        # From here a store that stops answering delays the run's writes (kept on disk) instead of ending it.
        self.tracker.keep_writes(self.out_dir / spool.FOLDER, tc.tracking.retry_window_s)

    def log_inputs(self) -> None:
        """Tell the hooks the run id; record what went in: the resolved config as params and YAML, the overrides,
        the label map, the data sets. A resumed run has them already and takes on this start's hook tags."""
        tracker, splits, tc = self.tracker, self.splits, self.cfg
        self.hooks.on_start(tracker.active_run_id)
        if self.resumed:  # no longer the interrupted run it was
            assert self.ck is not None  # a run resumes only from a checkpoint
            tracker.delete_tags("error", "error_type")
            tracker.set_tags({**self.hooks.tags, "ftsweep.resumed_at_step": self.ck["loop"]["result"].steps})
            return
        inputs.log_inputs(tracker, tc, self.raw, self.resolved, self.overrides, splits)

    # ---- setup: each part returns one thing
    def setup(self) -> None:
        if self.cfg.distributed.nproc > 1 and self.group is None:  # the helpers start while this rank builds
            self.group = distributed.start(self.raw, self.cfg.distributed.nproc, self.device, "ftsweep.recipe")
        self.build()
        self.params = outputs.param_counts(self.model)
        if self.main and not self.resumed:
            self.tracker.log_metrics(self.params, step=0)
        self._restore()

    def build(self) -> None:
        """The batches, the model with its method, the optimizer and its schedule, exactly as training uses them;
        nothing is logged. A plan's probe (ftsweep/probe.py) builds a run this far and times a few steps."""
        self.loaders = self._setup_data()
        self.model = self._setup_model()
        self._optimizer = self._setup_optimizer()
        self.scheduler = self._setup_lr_scheduler()

    def _setup_data(self) -> Loaders:
        tc, splits, tokenizer = self.cfg, self.splits, self.tokenizer
        if tc.batch_size > len(splits.train_texts):
            log.warning(
                "batch_size=%d is above the %d training examples: each epoch is one batch of %d",
                tc.batch_size,
                len(splits.train_texts),
                len(splits.train_texts),
            )
        train_ids = batches.tokenize(splits.train_texts, tokenizer, tc.data.max_length, tc.data.truncation)
        eval_ids = batches.tokenize(splits.eval_texts, tokenizer, tc.data.max_length, tc.data.truncation)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        train = batches.make_loader(
            train_ids,
            splits.train_labels,
            tc.batch_size,
            pad_id,
            shuffle=True,
            seed=tc.seed,
            group_by_length=tc.data.group_by_length,
            max_width=tc.data.max_length,
        )
        # 2 x batch_size by default, on CUDA too: a larger eval batch fills a card (docs/benchmarks.md) but
        # would often set the run's CUDA peak, which is the memory axis of a sweep's trade-offs. With a
        # micro_batch_size, 2 x that: the micro-batch was chosen to fit, and an eval must fit as well.
        evaluation = batches.make_loader(
            eval_ids,
            splits.eval_labels,
            tc.data.eval_batch_size or 2 * tc.forward_batch_size,
            pad_id,
            shuffle=False,
            seed=tc.seed,
            max_width=tc.data.max_length,
        )
        steps = total_optimizer_steps(len(train), tc.grad_accum_steps, tc.epochs, tc.max_steps)
        return Loaders(train, evaluation, steps)

    def _setup_model(self) -> torch.nn.Module:
        tc = self.cfg
        base = model_mod.load_model(tc.model, self.splits.label_names, self.tokenizer, tc.method)
        if isinstance(tc.model, TinyModelConfig) and methods.spec(tc.method).peft and tc.save_model != SaveModel.none:
            keep.save_base(base, self.out_dir / "base_model")  # random weights: a kept adapter needs them on disk
        model = model_mod.to_device(model_mod.apply_method(base, tc.method, self.loaders.total_steps), self.device)
        if tc.gradient_checkpointing:
            # Non-reentrant checkpointing also works when the embeddings are frozen (LoRA, prompt tuning).
            # A transformers (or PEFT) model's method: nn.Module's stub types any attribute as Tensor | Module.
            cast(Any, model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def _setup_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.model, self.cfg.optimizer, self.cfg.lr)

    def _setup_lr_scheduler(self):
        return build_scheduler(self.optimizer, self.cfg.optimizer, self.loaders.total_steps)

    def _restore(self) -> None:
        if self.ck is not None:
            checkpoint.restore(self.model, self.optimizer, self.scheduler, self.ck)

    # ---- training
    def train(self) -> FitResult:
        tc, group, main = self.cfg, self.group, self.main
        settings = LoopSettings.of(tc, self.loaders.total_steps, self.splits.num_labels, progress=main)
        # rank 0 evaluates, decides, logs and checkpoints for all; the other ranks only train
        wiring: dict[str, Any] = (
            {}
            if not main
            else {
                "resume": self.ck["loop"] if self.ck else None,
                "hooks": self.hooks,
                "log": self._log_fn(),
                "checkpoint": self._save_checkpoint if tc.checkpoint_every_steps else None,
                "evaluating": self.memory.evaluating,
            }
        )
        return fit(
            self.model,
            group.sharded(self.loaders.train) if group else self.loaders.train,
            self.loaders.eval if main else None,
            self.optimizer,
            self.scheduler,
            settings,
            self.device,
            step_hook=model_mod.step_hook(self.model),
            group=group,
            **wiring,
        )

    def _log_fn(self) -> LogFn:
        if not self.resumed:
            return self.tracker.log_metrics
        # Steps the run logged after its last checkpoint, before it died, are not logged twice.
        logged = self.tracker.last_step("train/loss", "eval/accuracy")

        def log_new(metrics: dict[str, float], step: int) -> None:
            if step > logged:
                self.tracker.log_metrics(metrics, step)

        return log_new

    @property
    def checkpoint_path(self) -> Path:
        return (self.out_dir / "checkpoint" / checkpoint.FILE).resolve()

    def _save_checkpoint(self, loop_state: dict) -> None:
        checkpoint.save(
            self.checkpoint_path,
            self.model,
            self.optimizer,
            self.scheduler,
            loop_state,
            self.tracker.active_run_id,
            self.ck["overrides"] if self.ck else self.overrides or [],
            self.resolved,
        )
        if not self._ck_tagged:  # the run points at its checkpoint only once there is one
            self.tracker.set_tags({checkpoint.RUN_TAG: str(self.checkpoint_path)})
            self._ck_tagged = True

    # ---- the end
    def rank_memory(self) -> dict[str, float]:
        """Every rank's peak (the CUDA allocator's on a GPU, RSS on the CPU), gathered on all of them."""
        assert self.group is not None, "only a distributed run has ranks"
        peak = self.memory.stop()
        peaks = self.group.gather(peak.get("mem/cuda_peak_allocated_mb", peak["mem/cpu_peak_rss_mb"]))
        return {**{f"mem/peak_mb_rank{i}": v for i, v in enumerate(peaks)}, "mem/peak_mb_all_ranks": sum(peaks)}

    def finish(self, result: FitResult) -> dict[str, float]:
        """Metrics (on disk first, then MLflow), artifacts, the kept model; the run ends FINISHED."""
        ranks = self.rank_memory() if self.group else {}
        self._stop_helpers()
        tc, splits = self.cfg, self.splits
        metrics = outputs.final_metrics(tc, result, len(splits.train_texts), self.loaders.total_steps)
        metrics.update(self.params)
        metrics.update(
            memory_breakdown(
                self.memory.stop(),
                self.model,
                result.grads_mb,
                self.optimizer,
                self.memory,
                result.activations_saved_mb,
            )
        )
        metrics.update(ranks)
        found = baselines.baselines(splits)  # what fine-tuning must beat on the same rows
        metrics.update({k: v for k, v in found.items() if k.startswith("baseline/")})
        result.final_eval["tfidf_predicted"] = found["tfidf_predicted"]
        outputs.record(self.tracker, result, metrics, splits.label_names, self.out_dir)
        if result.stop_reason != "pruned":  # a pruned trial is never a sweep's best
            outputs.keep_model(
                tc, self.tracker, self.model, self.tokenizer, splits, self.out_dir, in_folder=self.hooks.keep_in_folder
            )
        self.tracker.end("FINISHED")
        checkpoint.remove(self.checkpoint_path, self.ck_at)  # finished: nothing to resume (nor the one resumed from)
        return metrics

    def _stop_helpers(self) -> None:
        """Rank 0 holds the final results now: a helper's exit can no longer fail the run."""
        if self.group is None:
            return
        failed, self.group = distributed.stop(self.group), None
        if failed:
            self.tracker.set_tags({HELPER_EXIT_TAG: distributed.describe(failed)})
            log.warning(
                "distributed: %s after training had finished; the run keeps its results", distributed.describe(failed)
            )

    def fail(self, exc: BaseException) -> None:
        with interrupt.deferred():  # a second Ctrl-C must not leave the run RUNNING
            self.tracker.fail(exc, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")

    def cleanup(self) -> None:
        if self.group is not None:  # rank 0 failed or was interrupted: the helpers must not wait for it
            try:
                distributed.stop(self.group, wait_s=10, finished=False)
            except Exception:  # noqa: BLE001  the run's own error is the one to report
                pass
        self.memory.stop()
        self.model = self._optimizer = self.scheduler = None  # the weights go now, not when the caller lets go
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def train_helper_rank(raw: DictConfig, group: distributed.Group) -> None:
    """Ranks 1..N-1: rank 0's data, model and optimizer, trained in lockstep with it. Rank 0 checked every
    setting already, against its own device; only the data and tokenizer are needed here."""
    recipe = FineTuneRecipe(raw, group=group)
    recipe.splits, recipe.tokenizer = preflight.load_inputs(recipe.cfg)
    with tempfile.TemporaryDirectory(prefix="ftsweep-rank-") as scratch:
        recipe.out_dir = Path(scratch)  # a tiny model's random base is written here, and not kept
        recipe.setup()
    recipe.train()
    recipe.rank_memory()


if __name__ == "__main__":  # a helper rank's process (ftsweep/distributed.py starts it)
    distributed.helper_main(sys.argv[1], int(sys.argv[2]), train_helper_rank)
