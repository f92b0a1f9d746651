"""The docs stay true (fast: nothing runs, no subprocess).

Every `python -m ftsweep ...` or `ftsweep ...` command in a code block of README.md or docs/ (and every
`make run ARGS="..."`) composes against the shipped config with Hydra's compose API, as the entry point would
compose it: a single run is composed and its values checked; a sweep (-m) is composed as Hydra's multirun
composes it, ftsweep's sweeper reads its settings and search space, and the jobs it would probe first are
composed and checked too (for hydra-optuna-sweeper's own sweeper, the job with the first value of every swept
key). Every `make X` they name is a Makefile target, and every relative link points at a file (and, for
`page.md#anchor`, at a heading of that page)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ftsweep.config import CONF_DIR, objectives_of, validate
from ftsweep.sweep.definition import SweepDefinition, SweepSettings
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
FTSWEEP_SWEEPER = "hydra_plugins.ftsweep_sweeper.sweeper.FtsweepSweeper"

# Commands that cannot compose here, each for a documented reason (the command as written, after `ftsweep`).
CANNOT_COMPOSE = {
    "-m hparams_search=mine": "the user's own ./conf/hparams_search/mine.yaml, which the docs describe, not ship",
}

FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
SHELL = {"bash", "sh", "shell", "console"}
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[(?:[^\]\n]|\[[^\]\n]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def page_name(page: Path) -> str:
    return str(page.relative_to(REPO))


def code_blocks(text: str, shell_only: bool = False) -> list[tuple[int, str]]:
    """(line number of the block's first line, body) of every fenced block (```bash ones only: shell_only)."""
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in FENCE.finditer(text)
        if not shell_only or m.group(1).strip() in SHELL
    ]


def prose(text: str) -> str:
    """The page without its fenced blocks and inline code (so that `[x](y)` in code is no link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    args: tuple[str, ...]  # what follows `python -m ftsweep`

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def text(self) -> str:
        return " ".join(self.args)


def ftsweep_args(words: list[str]) -> list[str] | None:
    """The ftsweep arguments of a shell command, or None when it is no run of the entry point."""
    if words[:3] == ["python", "-m", "ftsweep"]:
        return words[3:]
    if words[:1] == ["ftsweep"]:  # the console script
        return words[1:]
    if words[:2] == ["make", "run"]:  # $(PY) -m ftsweep $(ARGS)
        args = [w[len("ARGS=") :] for w in words[2:] if w.startswith("ARGS=")]
        return shlex.split(args[0]) if args else []
    return None


def commands() -> list[Command]:
    found = []
    for page in PAGES:
        for first, body in code_blocks(page.read_text(), shell_only=True):
            lines = body.split("\n")
            i = 0
            while i < len(lines):
                start, line = i, lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i]
                i += 1
                if not re.match(r"\s*(python -m ftsweep|ftsweep|make run)(\s|$)", line):
                    continue
                args = ftsweep_args(shlex.split(line, comments=True))
                if args is not None:
                    found.append(Command(page_name(page), first + start, tuple(args)))
    return found


COMMANDS = commands()


def check_job(job: DictConfig) -> None:
    """What a run checks of its composed config before anything loads: types and ranges (ftsweep.config)."""
    with open_dict(job):
        del job["hydra"]
    validate(job)


def first_values(overrides: list[str]) -> list[str]:
    """One job of a sweep: each swept key at its first choice, or at the start of its range or interval."""
    job = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            job.append(override.input_line)
            continue
        value = override.value()
        first = value.start if isinstance(value, IntervalSweep) else next(override.sweep_string_iterator())
        job.append(f"{override.get_key_element()}={first}")
    return job


def compose_as_the_entry_point(args: list[str]) -> None:
    """Raise whatever `python -m ftsweep ARGS` would stop on while composing its config (or its sweep's)."""
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        if not multirun:
            check_job(compose("config", overrides=overrides, return_hydra_config=True))
            return
        hydra = GlobalHydra.instance()
        master = hydra.hydra.compose_config(
            "config", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        task = OmegaConf.to_container(master.hydra.overrides.task)  # what Hydra hands the sweeper
        loader = hydra.config_loader()
        if str(master.hydra.sweeper._target_) == FTSWEEP_SWEEPER:  # as FtsweepSweeper.sweep() starts
            settings = SweepSettings.from_config(master.hydra.sweeper)
            definition = SweepDefinition.build(settings, objectives_of(master), task)
            jobs = [
                [f"{k}={v}" for k, v in {**definition.fixed, **point}.items()] for point in definition.probe_points()
            ]
        else:
            jobs = [first_values(task)]
        for job in jobs:
            check_job(loader.load_sweep_config(master, job))


def test_the_docs_hold_the_commands_this_file_checks():
    pages = {c.page for c in COMMANDS}
    assert len(COMMANDS) >= 25 and "README.md" in pages and len(pages) >= 4, COMMANDS
    assert any("-m" in c.args for c in COMMANDS) and any("-m" not in c.args for c in COMMANDS)
    assert set(CANNOT_COMPOSE) <= {c.text for c in COMMANDS}, "an allow-list entry no page holds any more"


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_every_documented_ftsweep_command_composes_with_the_shipped_config(command):
    if command.text in CANNOT_COMPOSE:
        pytest.skip(CANNOT_COMPOSE[command.text])
    compose_as_the_entry_point(list(command.args))


def test_a_documented_command_that_does_not_compose_fails_this_check():
    from hydra.errors import ConfigCompositionException, MissingConfigException

    from ftsweep.errors import ConfigError

    with pytest.raises(ConfigCompositionException, match="lrr"):  # an unknown key
        compose_as_the_entry_point(["method=lora", "lrr=2e-4"])
    with pytest.raises(ConfigError, match="lr must be > 0"):  # a value out of range
        compose_as_the_entry_point(["method=lora", "lr=-1"])
    with pytest.raises(ConfigError, match="tpe2"):  # a sweep setting ftsweep's sweeper refuses
        compose_as_the_entry_point(["-m", "method=full,lora", "hydra.sweeper.sampler=tpe2"])
    with pytest.raises(MissingConfigException, match="lorax"):  # a swept choice that is no option
        compose_as_the_entry_point(["-m", "method=full,lorax"])
    with pytest.raises(MissingConfigException, match="lorax"):  # the same under hydra-optuna-sweeper's sweeper
        compose_as_the_entry_point(["-m", "hydra/sweeper=optuna", "method=lorax,full"])


def test_every_documented_predict_command_uses_predicts_own_arguments():
    from ftsweep.predict import parse

    found = 0
    for page in PAGES:
        for _, body in code_blocks(page.read_text(), shell_only=True):
            for line in body.splitlines():
                words = shlex.split(line, comments=True) if "ftsweep.predict" in line else []
                if words[:3] == ["python", "-m", "ftsweep.predict"]:
                    parse(words[3:])
                    found += 1
    assert found >= 2


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))


def test_every_make_target_the_docs_name_is_in_the_makefile():
    targets = makefile_targets()
    named = {}
    for page in PAGES:
        text = page.read_text()
        code = [body for _, body in code_blocks(text)] + INLINE_CODE.findall(FENCE.sub("", text))
        for snippet in code:
            for target in re.findall(r"(?<![\w./-])make ([a-z][\w-]*)", snippet):
                named.setdefault(target, page_name(page))
    assert {"run", "test", "study", "bench", "report", "ui", "dashboard"} <= set(named), named
    assert {t: p for t, p in named.items() if t not in targets} == {}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", page.read_text()), re.MULTILINE):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_every_relative_link_in_the_docs_points_at_a_file_and_heading_that_exist():
    broken, checked = [], 0
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text())):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            checked += 1
            if not file.exists() or not file.is_relative_to(REPO.resolve()):
                broken.append(f"{page_name(page)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page_name(page)}: {target} (no such heading)")
    assert checked >= 30
    assert broken == []


def test_the_pages_moved_out_of_the_readme_leave_no_reliability_md_behind():
    assert not (REPO / "RELIABILITY.md").exists() and (REPO / "docs" / "reliability.md").is_file()
    index = (REPO / "docs" / "README.md").read_text()
    pages = {p.name for p in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert {p for p in pages if f"]({p})" not in index} == set(), "a docs page the index does not list"


def test_the_readme_still_holds_the_two_commands_for_a_fresh_machine():
    """CI runs the README's test command; the front door keeps both commands and what they need."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## The two commands\n", 1)[1].split("\n## ", 1)[0]
    assert "On a fresh machine with Python 3.11 and pip (nothing else):" in section
    (_, block), *_ = code_blocks(section, shell_only=True)
    assert [line.split("#")[0].split() for line in block.splitlines()] == [["make", "run"], ["make", "test"]]
