"""`make bench`'s measurements of whole runs, as a user starts them (subprocesses with their own MLflow stores):

1. sweep efficiency and overhead: the user's grid `python -m ftsweep -m method=full,lora batch_size=8,16,32` on a
   reduced but realistic slice (400 training and 200 eval reviews, 128 tokens, basic launcher). Its wall time
   (process start to exit) splits into the trials' `perf/train_time_s`, their `perf/eval_time_s` and the rest,
   the fixed cost (imports, data read and tokenise, model load, MLflow, artifacts); `sweep_efficiency =
   sum(train) / wall`, `sweep_overhead = 1 - sum(train + eval) / wall`. With a `before` checkout the same command
   runs there too. Beside it, the import floor: a bare `python -c 'import ...'` of what the sweep imports.
2. the default run (`make run`'s `python -m ftsweep`) on this checkout and on `before`, with its peak RSS, and
   TF-IDF (1-2 grams) + logistic regression on the same rows (scikit-learn).
3. grouped against ungrouped training batches (data.group_by_length), same budget, three seeds each.
4. bf16 autocast against fp32 on this CPU: the default run and the study's slice, three seeds each.
5. attention dropout 0.1 against 0 in the default run, bf16, three seeds each.

`bench.py --only SECTION` reruns one of them alone.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GRID = [
    "method=full,lora",
    "batch_size=8,16,32",
    "data.max_train_samples=400",
    "data.max_eval_samples=200",
    "data.max_length=128",
    "progress_bar=false",
]


def ftsweep(repo: Path, tmp: str, *args: str) -> float:
    """Run `python -m ftsweep ARGS` in `tmp` on checkout `repo`; its wall time in seconds."""
    return ftsweep_measured(repo, tmp, *args)["wall_s"]


def ftsweep_measured(repo: Path, tmp: str, *args: str) -> dict:
    """Run `python -m ftsweep ARGS` in `tmp` on checkout `repo`: its wall time (process start to exit) and the
    process's own peak RSS (wait4's ru_maxrss: this child alone, not the children before it)."""
    env = {**os.environ, "PYTHONPATH": str(repo), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
    with open(f"{tmp}/stderr.txt", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftsweep", *args], cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"ftsweep {' '.join(args)} failed in {repo}:\n{Path(tmp, 'stderr.txt').read_text()[-3000:]}")
    return {"wall_s": wall, "process_peak_rss_mb": usage.ru_maxrss / 1024}


def trial_runs(tmp: str, experiment: str = "imdb") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def run_tag(tmp: str, tag: str) -> str | None:
    """A tag of the newest run in the store of `tmp` (the one run a single `python -m ftsweep` made)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags.get(tag) if runs else None


# --------------------------------------------------------------------------- 1. sweep efficiency
# What a sweep imports before it can train and log, from ftsweep's entry point to the report's plots.
SWEEP_IMPORTS = (
    "import ftsweep.__main__, ftsweep.conclude, ftsweep.preflight, ftsweep.recipe, ftsweep.sweep.runner, "
    "optuna, mlflow, sqlalchemy, matplotlib.pyplot"
)


def import_floor(repo: Path, repeats: int = 3) -> float:
    """The fastest of `repeats` bare `python -c 'import ...'` of what a sweep imports: the part of its rest that
    no change to ftsweep's own code removes."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", SWEEP_IMPORTS], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"import floor: {SWEEP_IMPORTS} failed in {repo}:\n{done.stderr[-2000:]}")
        times.append(time.perf_counter() - t0)
    return min(times)


def sweep_efficiency(repo: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        wall = ftsweep(repo, tmp, "-m", *GRID)
        runs = trial_runs(tmp)
    trials = [r.data.metrics for r in runs]
    train = sum(m["perf/train_time_s"] for m in trials)
    evaluation = sum(m["perf/eval_time_s"] for m in trials)
    spans = sum(r.info.end_time - r.info.start_time for r in runs) / 1000  # each trial's MLflow run, start to end
    return {
        "trials": len(trials),
        "wall_s": wall,
        "train_s": train,
        "eval_s": evaluation,
        "rest_s": wall - train - evaluation,
        "rest_per_trial_s": (wall - train - evaluation) / len(trials),
        "rest_inside_trial_runs_s": spans - train - evaluation,
        "rest_outside_trial_runs_s": wall - spans,
        "sweep_efficiency": train / wall,
        "sweep_overhead": 1 - (train + evaluation) / wall,  # the waste itself: neither training nor eval
        "accuracies": sorted(round(m["eval/accuracy"], 4) for m in trials),
        "imports_s": import_floor(repo),
    }


def bench_sweep_efficiency(before: Path | None) -> dict:
    sides = {"after": REPO, **({"before": before} if before else {})}
    with tempfile.TemporaryDirectory() as tmp:  # warm what both share (tokenised data, page cache); not measured
        for repo in sides.values():
            ftsweep(
                repo,
                tmp,
                "data.max_train_samples=16",
                "data.max_eval_samples=16",
                "max_steps=1",
                "progress_bar=false",
                f"hydra.run.dir={tmp}/warm",
            )
    out: dict = {"command": "python -m ftsweep -m " + " ".join(GRID)}
    for name in ["before", "after"] if before else ["after"]:
        out[name] = sweep_efficiency(sides[name])
        print(
            f"[sweep] {name}: wall {out[name]['wall_s']:.1f} s, train {out[name]['train_s']:.1f} s, eval "
            f"{out[name]['eval_s']:.1f} s, rest {out[name]['rest_s']:.1f} s -> efficiency "
            f"{out[name]['sweep_efficiency']:.3f}, overhead {out[name]['sweep_overhead']:.3f}",
            flush=True,
        )
    return out


# --------------------------------------------------------------------------- 2. the default run and TF-IDF
def default_run(*overrides: str, repo: Path = REPO) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        measured = ftsweep_measured(repo, tmp, "progress_bar=false", f"hydra.run.dir={tmp}/run", *overrides)
        m = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        precision = run_tag(tmp, "precision")
    return {
        "overrides": list(overrides),
        **measured,
        "accuracy": m["eval/accuracy"],
        "train_s": m["perf/train_time_s"],
        "eval_s": m["perf/eval_time_s"],
        "run_peak_rss_mb": m.get("mem/cpu_peak_rss_mb"),
        "train_state_mb": m.get("mem/train_state_mb"),
        "precision": precision,
    }


def tfidf_baseline(n_train: int) -> dict:
    """TF-IDF (1-2 grams) + logistic regression on the rows a default run trains and scores on."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from ftsweep.compose import compose_config
    from ftsweep.config import validate
    from ftsweep.data import load_splits

    splits = load_splits(validate(compose_config(f"data.max_train_samples={n_train}")).data)
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    clf = LogisticRegression(C=10.0, max_iter=2000).fit(vec.fit_transform(splits.train_texts), splits.train_labels)
    accuracy = float((clf.predict(vec.transform(splits.eval_texts)) == splits.eval_labels).mean())
    return {
        "train_reviews": n_train,
        "eval_reviews": len(splits.eval_labels),
        "accuracy": accuracy,
        "wall_s": time.perf_counter() - t0,
    }


def bench_default_run(before: Path | None = None, repeats: int = 1) -> dict:
    """`make run`'s run on this checkout (after) and on `before`, alternating which goes first, against TF-IDF."""
    sides = {"after": REPO, **({"before": before} if before else {})}
    out: dict = {name: [] for name in sides}
    for i in range(repeats):
        for name in sorted(sides, reverse=bool(i % 2)):
            out[name].append(default_run(repo=sides[name]))
    for name in sides:
        runs = out[name]
        out[name] = {
            **runs[0],
            "wall_s": [r["wall_s"] for r in runs],
            "process_peak_rss_mb": [r["process_peak_rss_mb"] for r in runs],
        }
        print(
            f"[default run] {name}: accuracy {runs[0]['accuracy']:.3f} in {out[name]['wall_s']} s, peak RSS "
            f"{out[name]['process_peak_rss_mb']} MB ({runs[0]['precision']})",
            flush=True,
        )
    out["tfidf"] = tfidf_baseline(2500)
    return out


# --------------------------------------------------------------------------- 3. length grouping parity
# 1,200 reviews: at 480 (30 steps) MiniLM had not yet left predicting one class, so parity said nothing.
PARITY = ["data.max_train_samples=1200", "data.max_eval_samples=400", "data.max_length=256", "save_model=none"]


def bench_grouped_parity(seeds=(1, 2, 3)) -> dict:
    runs: dict[str, list] = {"grouped": [], "ungrouped": []}
    for seed in seeds:
        for name in ("grouped", "ungrouped") if seed % 2 else ("ungrouped", "grouped"):
            flag = "true" if name == "grouped" else "false"
            runs[name].append(default_run(*PARITY, f"seed={seed}", f"data.group_by_length={flag}"))
    out: dict = {"settings": " ".join(PARITY), "seeds": list(seeds)}
    for name, rs in runs.items():
        acc = [r["accuracy"] for r in rs]
        out[name] = {
            "accuracies": acc,
            "mean": statistics.mean(acc),
            "spread": max(acc) - min(acc),
            "stdev": statistics.stdev(acc),
            "train_s": [r["train_s"] for r in rs],
        }
        print(
            f"[grouping] {name}: accuracy {statistics.mean(acc):.3f} ± {statistics.stdev(acc):.3f}, train "
            f"{statistics.mean(out[name]['train_s']):.0f} s",
            flush=True,
        )
    out["train_speedup"] = statistics.mean(out["ungrouped"]["train_s"]) / statistics.mean(out["grouped"]["train_s"])
    return out


# --------------------------------------------------------------------------- benchmarks/README.md
def _measured(section: dict) -> str:
    return f" Measured {section['date']} on {section['cpu']}." if "date" in section else ""


def readme_lines(r: dict) -> list[str]:
    lines = []
    s = r["sweep_efficiency"]
    lines += [
        "",
        f"Sweep efficiency, `{s['command']}` (6 trials, basic launcher; wall = process start to exit; before = "
        f"`{s.get('before_ref', 'the previous main')}`).{_measured(s)}",
        "",
        "| code | wall s | train s | eval s | rest s (per trial) | of it, imports s | sweep_efficiency "
        "| sweep_overhead (goal <= 0.07) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("before", "after"):
        if name in s:
            v = s[name]
            overhead = v.get("sweep_overhead", 1 - (v["train_s"] + v["eval_s"]) / v["wall_s"])
            lines.append(
                f"| {name} | {v['wall_s']:.1f} | {v['train_s']:.1f} | {v['eval_s']:.1f} | {v['rest_s']:.1f} "
                f"({v['rest_per_trial_s']:.1f}) | {_seconds(v.get('imports_s'))} | {v['sweep_efficiency']:.3f} "
                f"| **{overhead:.3f}** |"
            )
    lines += [
        "",
        "Imports: the fastest of three bare `python -c '" + SWEEP_IMPORTS + "'`, the floor of the rest.",
    ]
    lines += _default_run_lines(r["default_run"])
    if "bf16_parity" in r:
        lines += _parity_lines(r["bf16_parity"])
    if "attention_dropout" in r:
        lines += _attention_dropout_lines(r["attention_dropout"])
    return lines + _grouping_lines(r["grouped_parity"])


def _seconds(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.1f}"


def _default_run_lines(d: dict) -> list[str]:
    lines = [
        "",
        "Default run (`make run`, data cached; wall = process start to exit; peak RSS = "
        f"the process's own, from wait4) against TF-IDF + logistic regression on the same rows.{_measured(d)}",
        "",
        "| code | precision | accuracy | wall s | train s | eval s | peak RSS MB | train state MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("before", "after"):
        if name in d:
            v = d[name]
            lines.append(
                f"| {name} | {v.get('precision')} | **{v['accuracy']:.3f}** | "
                + ", ".join(f"{w:.0f}" for w in v["wall_s"])
                + f" | {v['train_s']:.0f} | {v['eval_s']:.0f} | "
                + ", ".join(f"{m:.0f}" for m in v["process_peak_rss_mb"])
                + f" | {v['train_state_mb']:.0f} |"
            )
    t = d["tfidf"]
    lines.append(f"| TF-IDF + logistic regression, {t['train_reviews']:,} reviews | | {t['accuracy']:.3f} | | | | | |")
    return lines


def _parity_lines(b: dict) -> list[str]:
    lines = [
        "",
        f"bf16 autocast against fp32 on this CPU, seeds {b['default_run']['seeds']} (timings ran beside other work: "
        f"not quoted as speed).{_measured(b)} Parity holds when bf16's mean is inside fp32's seed range and no more "
        "than 0.5 points below fp32's mean.",
        "",
        "| setting | fp32 accuracy per seed | fp32 mean ± stdev | bf16 accuracy per seed | bf16 mean ± stdev | gap "
        "(points) | holds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v in b.items():
        if isinstance(v, dict) and "fp32" in v:
            cells = [
                f"{', '.join(f'{a:.3f}' for a in v[p]['accuracies'])} | {v[p]['mean']:.4f} ± {v[p]['stdev']:.4f}"
                for p in ("fp32", "bf16")
            ]
            what = name.replace("_", " ") + (f" (`{' '.join(v['overrides'])}`)" if v["overrides"] else "")
            lines.append(
                f"| {what} | {cells[0]} | {cells[1]} | {v['gap_points']:+.2f} | {'yes' if v['holds'] else 'no'} |"
            )
    return lines


def _grouping_lines(g: dict) -> list[str]:
    lines = []
    rerun = (
        f" Measured {g['date']} with `bench.py --only-parity` ({g['wall_s']:.0f} s), after the main run, whose "
        f"480-review budget left MiniLM predicting one class."
        if g.get("rerun")
        else ""
    )
    lines += [
        "",
        f"Length-grouped against random training batches (`{g['settings']}`, MiniLM full, seeds {g['seeds']}).{rerun}",
        "",
        "| batches | accuracy per seed | mean ± stdev (spread) | train s (mean) |",
        "|---|---|---|---|",
    ]
    for name in ("ungrouped", "grouped"):
        v = g[name]
        lines.append(
            f"| {name} | {', '.join(f'{a:.3f}' for a in v['accuracies'])} | {v['mean']:.3f} ± "
            f"{v['stdev']:.3f} ({v['spread']:.3f}) | {statistics.mean(v['train_s']):.0f} |"
        )
    lines.append(f"\nGrouping trains {g['train_speedup']:.2f}x as fast at 256 tokens.")
    return lines


# --------------------------------------------------------------------------- 4. bf16 parity on the CPU
# The study's slice (conf/hparams_search/study.yaml) at each method's best learning rate there (docs/study).
STUDY_SLICE = {
    "full": ["data.max_train_samples=1500", "data.max_eval_samples=1000", "data.max_length=128", "lr=1.25e-4"],
    "lora": [
        "method=lora",
        "data.max_train_samples=1500",
        "data.max_eval_samples=1000",
        "data.max_length=128",
        "lr=3e-3",
    ],
}


def compare_seeds(name: str, variants: dict[str, list[str]], seeds, repo: Path = REPO) -> dict:
    """Each variant (its overrides) of one setting, seed by seed, alternating which goes first; the second
    variant against the first by the issue's rule: its mean inside the first's seed range and no more than 0.5
    points below the first's mean."""
    runs: dict[str, list] = {v: [] for v in variants}
    for seed in seeds:
        for v in list(variants) if seed % 2 else list(variants)[::-1]:
            r = default_run(*variants[v], "save_model=none", f"seed={seed}", repo=repo)
            runs[v].append(r)
            print(f"[{name}] {v} seed {seed}: {r['accuracy']:.4f} ({r['train_s']:.0f} s)", flush=True)
    out: dict = {"seeds": list(seeds)}
    for v, rs in runs.items():
        acc = [r["accuracy"] for r in rs]
        out[v] = {"accuracies": acc, "mean": statistics.mean(acc), "stdev": statistics.stdev(acc)}
        out[v]["spread"] = [min(acc), max(acc)]
        out[v].update({k: [r[k] for r in rs] for k in ("train_s", "eval_s", "process_peak_rss_mb", "train_state_mb")})
    reference, other = (out[v] for v in variants)
    gap = other["mean"] - reference["mean"]
    out["gap_points"] = 100 * gap
    out["holds"] = reference["spread"][0] <= other["mean"] <= reference["spread"][1] and gap >= -0.005
    return out


def parity_of(name: str, overrides: list[str], seeds, repo: Path = REPO) -> dict:
    """fp32 against bf16 autocast on one setting."""
    variants = {p: [*overrides, f"precision={p}"] for p in ("fp32", "bf16")}
    return {"overrides": overrides, **compare_seeds(f"bf16 parity, {name}", variants, seeds, repo)}


def bench_bf16_parity(seeds=(1, 2, 3), repo: Path = REPO) -> dict:
    """Accuracy of bf16 autocast against fp32 on this CPU: the default run and the study's slice (full and LoRA at
    their best learning rates), 3 seeds each. Parity decides `precision=auto` on CPUs with native bf16."""
    out = {"default_run": parity_of("default run", [], seeds, repo)}
    for method, overrides in STUDY_SLICE.items():
        out[f"study_{method}"] = parity_of(f"study slice, {method}", overrides, seeds, repo)
    out["holds"] = all(v["holds"] for v in out.values() if isinstance(v, dict))
    return out


# --------------------------------------------------------------------------- 5. attention dropout on the CPU
def bench_attention_dropout(seeds=(1, 2, 3), repo: Path = REPO) -> dict:
    """The default run at the checkpoint's attention dropout (0.1) against none, bf16, 3 seeds each: without it
    PyTorch's fused attention runs on the CPU, which never stores the attention matrix."""
    variants = {p: ["precision=bf16", f"model.attention_dropout={p}"] for p in ("0.1", "0.0")}
    return {"precision": "bf16", **compare_seeds("attention dropout", variants, seeds, repo)}


def _attention_dropout_lines(a: dict) -> list[str]:
    lines = [
        "",
        f"Attention dropout in the default run, 0.1 (the checkpoint's) against 0 (`model.attention_dropout=0.0`, "
        f"MiniLM's default since round 5), bf16, seeds {a['seeds']}.{_measured(a)} Same rule as bf16's parity"
        + (f"; {a['note']}." if a.get("note") else "."),
        "",
        "| attention dropout | accuracy per seed | mean ± stdev | train s | peak RSS MB | train state MB |",
        "|---|---|---|---|---|---|",
    ]
    for p in ("0.1", "0.0"):
        v = a[p]
        state = f"{statistics.mean(v['train_state_mb']):.0f}" if v["train_state_mb"] else "not recorded"
        lines.append(
            f"| {p} | {', '.join(f'{x:.3f}' for x in v['accuracies'])} | {v['mean']:.4f} ± {v['stdev']:.4f} | "
            + ", ".join(f"{t:.0f}" for t in v["train_s"])
            + " | "
            + (", ".join(f"{m:.0f}" for m in v["process_peak_rss_mb"]) or "not recorded")
            + f" | {state} |"
        )
    lines.append(f"\nGap {a['gap_points']:+.2f} points: parity {'holds' if a['holds'] else 'does not hold'}.")
    return lines
