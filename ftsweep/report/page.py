"""report.md as a page to send to a colleague: one self-contained HTML file.

The Markdown stays the one source of the content: this module only presents it. markdown-it-py parses it, and
its token stream is adjusted before it is rendered:
- the plots beside report.md are embedded as `data:` URIs, so that the file works when mailed alone;
- 32-hex MLflow run ids show their first 8 characters, the full id as a tooltip, and link to the run in the
  MLflow UI when the tracking store is an http(s) server (a sqlite file has no UI to link to);
- the table columns of numbers are right-aligned;
- the `## Answer` section, and the `## Warnings` section when there is one, go into a box at the top.
The style is inline and uses the reader's system fonts: no external CSS, JavaScript or fonts.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from markdown_it import MarkdownIt
from markdown_it.token import Token

log = logging.getLogger("ftsweep.report")

RUN_ID = re.compile(r"[0-9a-f]{32}")
# A cell that starts with a number: 22,713,986 · 0.3269 · 5e-05 · "= +0.0 points [-1.2, +1.4]"
NUMBER = re.compile(r"=?\s*[+-]?\d[\d,]*(\.\d+)?(e[+-]?\d+)?(\s|$)")
NONE = ("", "–")  # how the Markdown writes a missing value (rows.fmt)


@dataclass(frozen=True)
class RunLinks:
    """Where the MLflow UI shows a run of the report's experiment; `server` None: nowhere (no links)."""

    server: Optional[str] = None
    experiment_id: str = ""

    @classmethod
    def of(cls, tracking_uri: str, experiment_id: str) -> RunLinks:
        parts = urlsplit(tracking_uri)
        if parts.scheme not in ("http", "https"):
            return cls(None, experiment_id)
        host = parts.netloc.rpartition("@")[2]  # a page that gets mailed around carries no user name or password
        return cls(urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")), experiment_id)

    def url(self, run_id: str) -> Optional[str]:
        return None if self.server is None else f"{self.server}/#/experiments/{self.experiment_id}/runs/{run_id}"


def to_html(markdown_text: str, title: str, folder: Optional[Path] = None, links: RunLinks = RunLinks()) -> str:
    """report.md as a standalone page; `folder` holds the images it names (report.md's own folder)."""
    md = _markdown()
    tokens = md.parse(markdown_text)
    for token in tokens:
        if token.type == "inline":
            _embed_images(token, folder)
            _shorten_run_ids(token, links)
    _mark_plots(tokens)
    _align_numbers(tokens)
    before, answer, warnings, after = _split(tokens)

    def render(part: list[Token]) -> str:
        return md.renderer.render(part, md.options, {})

    box = ""
    if answer:
        alerts = f'<div class="warnings" role="note">\n{render(warnings)}</div>\n' if warnings else ""
        box = f'<section class="answer">\n{render(answer)}{alerts}</section>\n'
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style></head>\n"
        f"<body>\n{render(before)}{box}{render(after)}</body></html>\n"
    )


def _markdown() -> MarkdownIt:
    # breaks: the report writes one statement per line (the answer's lines, the plots), so a newline stays one;
    # html off: text such as an error message's `<module>` is shown, not interpreted
    md = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable("table")
    md.add_render_rule("run_id", _render_run_id)
    md.add_render_rule("table_open", _table_open)
    md.add_render_rule("table_close", _table_close)
    md.add_render_rule("th_open", _header_open)
    md.add_render_rule("th_close", _header_close)
    return md


# Render rules: markdown-it binds each to its renderer as a method (`self`).
def _render_run_id(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    run_id, url = tokens[idx].meta["run_id"], tokens[idx].meta["url"]
    code = f'<code class="run-id" title="MLflow run {run_id}">{run_id[:8]}</code>'
    return f'<a href="{html.escape(url)}">{code}</a>' if url else code


def _table_open(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return '<div class="scroll"><table>\n'  # a wide table scrolls in its frame, and the page stays put


def _table_close(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return "</table></div>\n"


def _header_open(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return self.renderToken(tokens, idx, options, env) + "<span>"  # the span caps its width: `th > span`


def _header_close(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return "</span></th>\n"


def _embed_images(inline: Token, folder: Optional[Path]) -> None:
    """An image that is a file beside report.md becomes a data: URI (the plots are PNGs of ~30 kB each)."""
    if folder is None:
        return
    for child in [c for c in inline.children or [] if c.type == "image"]:
        src = str(child.attrGet("src"))
        if Path(src).name != src:
            continue  # only the report's own files, never a path elsewhere
        path = folder / src
        if not path.is_file():
            log.warning("report.html: %s is not beside the report; the page links to it instead", src)
            continue
        kind = mimetypes.guess_type(src)[0] or "application/octet-stream"
        child.attrSet("src", f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}")


def _shorten_run_ids(inline: Token, links: RunLinks) -> None:
    """A run id, in backticks or alone in a table cell, becomes a `run_id` token (see _render_run_id)."""
    for child in inline.children or []:
        if child.type in ("code_inline", "text") and RUN_ID.fullmatch(child.content):
            run_id = child.content
            child.type, child.content = "run_id", ""
            child.meta = {"run_id": run_id, "url": links.url(run_id)}


def _mark_plots(tokens: list[Token]) -> None:
    """A paragraph of images only (the plots) is laid out as a grid."""
    for i, token in enumerate(tokens[:-1]):
        children = tokens[i + 1].children or []
        if token.type == "paragraph_open" and children and all(c.type in ("image", "softbreak") for c in children):
            token.attrSet("class", "plots")


def _align_numbers(tokens: list[Token]) -> None:
    """Right-align each table column whose cells all hold a number (or nothing), its header too."""
    columns: dict[int, list[tuple[Token, str]]] = {}
    column = 0
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            columns = {}
        elif token.type == "tr_open":
            column = 0
        elif token.type in ("th_open", "td_open"):
            columns.setdefault(column, []).append((token, tokens[i + 1].content.strip()))
            column += 1
        elif token.type == "table_close":
            for cells in columns.values():
                values = [text for cell, text in cells if cell.type == "td_open" and text not in NONE]
                if values and all(NUMBER.match(v) for v in values):
                    for cell, _ in cells:
                        cell.attrSet("class", "num")


def _section(tokens: list[Token], name: str) -> range:
    """The tokens of the `## name` section: its heading up to the next heading of level 1 or 2."""
    headings = [i for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag in ("h1", "h2")]
    for start, end in zip(headings, [*headings[1:], len(tokens)]):
        if tokens[start].tag == "h2" and tokens[start + 1].content.strip().startswith(name):
            return range(start, end)
    return range(0)


def _split(tokens: list[Token]) -> tuple[list[Token], list[Token], list[Token], list[Token]]:
    """(what comes before the answer, the answer, the warnings, the rest): each a list of tokens."""
    answer, warnings = _section(tokens, "Answer"), _section(tokens, "Warnings")
    boxed = set(answer) | set(warnings)
    start = answer.start if answer else len(tokens)
    before = [t for i, t in enumerate(tokens) if i < start and i not in boxed]
    after = [t for i, t in enumerate(tokens) if i >= start and i not in boxed]
    return before, [tokens[i] for i in answer], [tokens[i] for i in warnings], after


STYLE = """
:root { --text: #1f2328; --line: #d8dee4; --zebra: #f6f8fa; --accent: #0b5cad; }
body { font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--text); max-width: 80rem; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.65rem; line-height: 1.25; margin: .3em 0 .4em; }
h2 { font-size: 1.25rem; margin: 2em 0 .6em; padding-bottom: .25em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.6em 0 .5em; }
p, ul { max-width: 72rem; }
a { color: var(--accent); }
code { font: .87em/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
       background: #eff1f3; padding: .1em .35em; border-radius: 4px; }
a code { color: inherit; }
.answer { background: #eef5ff; border: 1px solid #b9d3f5; border-left: 6px solid var(--accent);
          border-radius: 8px; padding: .2rem 1.5rem 1.1rem; margin: 1.2rem 0 2.2rem; }
.answer h2 { border: 0; margin: .8em 0 .3em; color: var(--accent); }
.answer p { font-size: 1.06rem; margin: .4em 0; }
.answer code { background: #fff; }
.warnings { background: #fff7e0; border: 1px solid #efc66b; border-left: 6px solid #c47a00;
            border-radius: 6px; padding: 0 1.2rem .6rem; margin-top: 1rem; }
.warnings h2 { color: #8a4b00; font-size: 1.05rem; }
.warnings h2::before { content: "⚠ "; }
.warnings ul { padding-left: 1.2rem; margin: .3em 0; }
.warnings li { margin: .25em 0; }
.warnings li > code:first-child { background: #fbd98b; color: #5c3200; font-weight: 600; }
.scroll { overflow-x: auto; width: fit-content; max-width: 100%; margin: .8rem 0 1.2rem;
          border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: .35rem .65rem; border-bottom: 1px solid var(--line); text-align: left; }
th { background: #eef1f4; font-weight: 600; vertical-align: bottom; }
/* fit-content(16em): short headers on one line, a long one (the memory column's) wraps at 16em */
th > span { display: inline-block; width: max-content; max-width: 16em; }
td { white-space: nowrap; }
tbody tr:nth-child(even) { background: var(--zebra); }
tbody tr:last-child td { border-bottom: 0; }
th.num, td.num { text-align: right; }
img { max-width: 100%; height: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 1rem; max-width: none; }
.plots br { display: none; }
.plots img { flex: 1 1 32rem; min-width: 0; max-width: 770px; border: 1px solid var(--line); border-radius: 6px; }
"""
