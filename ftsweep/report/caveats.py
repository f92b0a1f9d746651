"""What a sweep cannot tell: warnings, each one line with its evidence and the override that would address it.

Kinds (public: report.json's `warnings[].kind` and the parent run's tag `ftsweep.warnings`):
- `at_chance`: a trial not above the majority-class rate by its 95 % interval, or predicting one class only;
- `edge_of_range`: a configuration the answer names has a searched numeric value at the end of those tried;
- `undertrained`: the answer's trials were still learning at the end (loss falling, or eval rising);
- `diverged`: a trial whose loss became NaN or inf, or ended above where it started;
- `cannot_separate`: every configuration is tied with the best, so the eval set cannot rank them;
- `few_trials`: importances or fronts drawn from too few finished trials.
Pure functions of the rows, their loss and eval histories (Row.history) and the recommendation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ftsweep.report.recommend import Recommendation
from ftsweep.report.replicates import Configuration, given
from ftsweep.report.rows import Row, to_float

KINDS = ("at_chance", "edge_of_range", "undertrained", "diverged", "cannot_separate", "few_trials")
FEW_TRIALS = 10  # below this, PED-ANOVA's importances and the fronts are mostly noise
STILL_FALLING = 0.95  # the last quarter's mean loss below 95 % of the quarter before's
STILL_RISING = 0.01  # the last eval more than 1 point above the one before, and the highest


@dataclass(frozen=True)
class Caveat:
    kind: str
    message: str  # the evidence
    override: str  # what would address it, as the user would type it
    parameter: Optional[str] = None

    def line(self) -> str:
        return f"- `{self.kind}`: {self.message}; try `{self.override}`."


def find(rows: list[Row], rec: Recommendation, importances: dict[str, float]) -> list[Caveat]:
    """Every warning for this sweep, in the order of KINDS."""
    answer = [rec.best, *(p.config for p in rec.picks)] if rec.best is not None else []
    named = list({id(c): c for c in answer if c is not None}.values())
    return [
        *at_chance(rows),
        *edge_of_range(rows, named),
        *undertrained([r for c in named for r in c.rows]),
        *diverged(rows),
        *cannot_separate(rec),
        *few_trials(rows, importances),
    ]


def _trials(rows: list[Row]) -> str:
    return ", ".join(str(r.trial) for r in rows[:8]) + (f" and {len(rows) - 8} more" if len(rows) > 8 else "")


def at_chance(rows: list[Row]) -> list[Caveat]:
    ok = [r for r in rows if r.ok]
    chance = [r for r in ok if r.predicted_classes == 1 or _not_above_majority(r)]
    if not chance:
        return []
    trained = [r for r in ok if all(r is not c for c in chance)]
    lrs = [to_float(r.params.get("lr")) for r in chance]
    top = max((to_float(r.params.get("lr")) or 0.0 for r in trained), default=None)
    if top and all(lr is not None and lr > top for lr in lrs):
        fix = f"lr={top:.3g}"  # every trial at chance had a higher lr than every trial that learned
    else:
        fix = f"max_steps={2 * max(int(r.get('train/steps') or 1) for r in chance)}"
    single = sum(r.predicted_classes == 1 for r in chance)
    majority = next((m for r in chance if (m := r.get("baseline/majority_accuracy")) is not None), None)
    rate = f" {majority:.3f}" if majority is not None else ""
    return [
        Caveat(
            "at_chance",
            f"{len(chance)} of {len(ok)} finished trial(s) ({_trials(chance)}) are not above the majority-class "
            f"rate{rate} by their 95 % interval; {single} of them predict a single class",
            fix,
        )
    ]


def _not_above_majority(r: Row) -> bool:
    low, majority = r.get("eval/accuracy_ci_low"), r.get("baseline/majority_accuracy")
    return low is not None and majority is not None and low <= majority


def edge_of_range(rows: list[Row], named: list[Configuration]) -> list[Caveat]:
    """For each configuration the answer names: a numeric parameter its group (method) tried at three or more
    values whose chosen value is the lowest or highest tried."""
    out, seen = [], set()
    for c in named:
        first = c.rows[0]
        group = [r for r in rows if r.ok and (r.group or r.method) == (first.group or first.method)]
        for key, value in c.params.items():
            tried = sorted({v for r in group if (v := to_float(given(r).get(key))) is not None})
            chosen = to_float(value)
            if chosen is None or len(tried) < 3 or (key, chosen) in seen or chosen not in (tried[0], tried[-1]):
                continue
            seen.add((key, chosen))
            up = chosen == tried[-1]
            step = tried[-1] / tried[-2] if up else tried[0] / tried[1]
            beyond = chosen * step if tried[0] > 0 else chosen + (tried[-1] - tried[-2] if up else tried[0] - tried[1])
            nxt = round(beyond) if float(chosen).is_integer() else float(f"{beyond:.2g}")
            out.append(
                Caveat(
                    "edge_of_range",
                    f"`{first.group or first.method}`'s chosen {key}={value} is the {'highest' if up else 'lowest'} "
                    f"of the {len(tried)} values tried; the optimum may lie {'above' if up else 'below'} it",
                    f"{key}={','.join(str(v) for v in sorted({chosen, nxt}))}",
                    parameter=key,
                )
            )
    return out


def undertrained(rows: list[Row]) -> list[Caveat]:
    """One line for all of the answer's trials that were still learning at the end."""
    found = [(r, why) for r in rows if (why := _still_learning(r))]
    if not found:
        return []
    steps = max(int(r.get("train/steps") or 0) for r, _ in found)
    evidence = "; ".join(f"trial {r.trial}: {why}" for r, why in found)
    return [
        Caveat(
            "undertrained",
            f"{len(found)} of the answer's trials were still learning ({evidence})",
            f"max_steps={2 * steps}",
        )
    ]


def _still_learning(r: Row) -> str:
    """Why `r` was still learning when it stopped, or "" when it was not."""
    loss, evals = r.history.get("train/loss", []), r.history.get("eval/accuracy", [])
    q = len(loss) // 4
    why = []
    if q >= 2 and sum(loss[-q:]) / q < STILL_FALLING * sum(loss[-2 * q : -q]) / q:
        why.append(f"loss {sum(loss[-2 * q : -q]) / q:.3f} → {sum(loss[-q:]) / q:.3f} over its last quarters")
    if len(evals) >= 3 and evals[-1] > evals[-2] + STILL_RISING and evals[-1] == max(evals):
        why.append(f"last eval still rising, {evals[-2]:.3f} → {evals[-1]:.3f}")
    return " and ".join(why)


def diverged(rows: list[Row]) -> list[Caveat]:
    out = []
    for r in rows:
        loss = r.history.get("train/loss", [])
        blew_up = "diverged" in r.error or any(not math.isfinite(v) for v in loss)
        tail = loss[-max(1, len(loss) // 4) :]  # a quarter, not one noisy point
        ended_higher = r.ok and len(loss) >= 4 and sum(tail) / len(tail) > loss[0]
        if not (blew_up or ended_higher):
            continue
        lr = to_float(r.params.get("lr"))
        why = (
            "its loss became NaN or inf"
            if blew_up
            else f"its loss ended above where it started ({loss[0]:.3f} → {sum(tail) / len(tail):.3f})"
        )
        out.append(Caveat("diverged", f"trial {r.trial}: {why}", f"lr={lr / 10:.3g}" if lr else "lr=<lower>", "lr"))
    return out


def cannot_separate(rec: Recommendation) -> list[Caveat]:
    others = [(c, vs) for c, vs in rec.versus_best if c is not rec.best]
    if not others or not all(vs.tied for _, vs in others):
        return []
    config, widest = max(others, key=lambda cv: abs(cv[1].diff))
    n = config.rows[0].eval_samples or 0
    half = (widest.high - widest.low) / 2
    if widest.diff == 0 or n == 0:
        need = "no difference at all was observed"
        fix = "a wider search"
    else:
        examples = math.ceil(n * (half / abs(widest.diff)) ** 2)
        need = f"about {examples:,} eval examples would resolve the largest gap seen ({100 * widest.diff:+.1f} points)"
        fix = f"data.max_eval_samples={examples}"
    return [
        Caveat(
            "cannot_separate",
            f"all {len(others) + 1} configurations are tied with the best on {n:,} eval examples; {need}",
            fix,
        )
    ]


def few_trials(rows: list[Row], importances: dict[str, float]) -> list[Caveat]:
    n = sum(r.ok for r in rows)
    if n >= FEW_TRIALS or n < 2:
        return []
    drawn = "parameter importances and Pareto fronts" if importances else "Pareto fronts"
    return [
        Caveat(
            "few_trials",
            f"{drawn} drawn from only {n} finished trials (at least {FEW_TRIALS} make them worth reading)",
            f"hydra.sweeper.n_trials={max(FEW_TRIALS, 2 * n)}",
        )
    ]
