"""report.html (ftsweep/report/page.py): pure functions on a report-shaped Markdown, then the page in a browser."""

import base64
import html
import json
import re

import pytest

from ftsweep.report.page import STYLE, RunLinks, to_html
from ftsweep.report.render import table

BEST = "f46c6eb86586457a8b949a1eecc136e9"
OTHER = "9048e4ec986741f5b8fd8746d28e4ff4"
PARENT = "dd4eaa7189b04270bc3dacd0b51b4581"
SQLITE = RunLinks.of("sqlite:////tmp/mlflow.db", "3")


def report_md(warnings: bool = True) -> str:
    """The shape render.render writes: title, parent run, Answer, Warnings, the trials table, the plots."""
    md = [
        "# Trade-off report: demo",
        "",
        f"MLflow parent run `{PARENT}` · 2 finished, 0 pruned, 0 failed trials.",
        "",
        "## Answer",
        "",
        f"**Best overall:** `lora` with lr=0.0005: accuracy 0.8731, memory 812 MB, step time 41.2 ms (run `{BEST}`).",
        "**Tied with the best:** 1 of the 1 other finished trial(s).",
        "",
    ]
    if warnings:
        md += [
            "## Warnings",
            "",
            "- `edge_of_range`: the best lr, 0.0005, is the top of its searched range; widen it.",
            "- `few_trials`: only 2 trials finished <in time>.",
            "",
        ]
    header = ["trial", "method", "accuracy", "trainable", "memory MB", "state", "run id"]
    rows = [
        [1, "lora", 0.873123, 22713986, 812.44, "FINISHED", BEST],
        [0, "full", 0.8612, 109483778, None, "OK", OTHER],
    ]
    return "\n".join([*md, "## All trials", "", *table(header, rows), "", "## Plots", "", "![memory](memory.png)"])


def box_of(page: str) -> str:
    return page[page.index('<section class="answer">') : page.index("</section>")]


def test_the_answer_and_its_warnings_are_in_a_box_at_the_top():
    page = to_html(report_md(), "t", links=SQLITE)
    box = box_of(page)
    assert "Best overall:" in box and "Tied with the best:" in box
    warnings = box[box.index('<div class="warnings"') :]
    assert "<code>edge_of_range</code>" in warnings and "<code>few_trials</code>" in warnings
    assert "&lt;in time&gt;" in warnings and page.count("edge_of_range") == 1  # moved into the box, not copied
    assert page.index("<h1>") < page.index("<section") < page.index("<table")
    assert "Best overall:</strong> <code>lora</code> with lr=0.0005: accuracy 0.8731" in box
    assert "<br />\n<strong>Tied with the best:" in box  # each line of the answer on its own line


def test_without_a_warnings_section_the_box_holds_the_answer_alone():
    page = to_html(report_md(warnings=False), "t", links=SQLITE)
    assert "Best overall:" in box_of(page) and "warnings" not in page.replace(STYLE, "")
    assert box_of(page).count("<h2>") == 1 and "<h2>All trials</h2>" in page[page.index("</section>") :]


def test_run_ids_are_short_with_the_full_id_as_a_tooltip():
    page = to_html(report_md(), "t", links=SQLITE)
    for run_id in (PARENT, BEST, OTHER):
        assert f'<code class="run-id" title="MLflow run {run_id}">{run_id[:8]}</code>' in page
        assert page.count(run_id) == page.count(f'title="MLflow run {run_id}"')  # never shown whole
    assert "<a " not in page  # a sqlite store has no UI to link to


def test_run_ids_link_to_the_mlflow_ui_of_an_http_server_without_its_credentials():
    links = RunLinks.of("https://ml:s3cret@mlflow.example.org:5000/prefix/", "3")
    page = to_html(report_md(), "t", links=links)
    hrefs = re.findall(r'<a href="([^"]+)">', page)
    assert hrefs == [
        f"https://mlflow.example.org:5000/prefix/#/experiments/3/runs/{r}" for r in (PARENT, BEST, BEST, OTHER)
    ]
    assert "s3cret" not in page and "ml:" not in page
    assert RunLinks.of("http://127.0.0.1:5000", "0").url(BEST) == f"http://127.0.0.1:5000/#/experiments/0/runs/{BEST}"
    assert RunLinks.of("databricks", "0").url(BEST) is None


def test_the_page_is_one_file_with_its_plots_embedded(tmp_path):
    png = b"\x89PNG not really"
    (tmp_path / "memory.png").write_bytes(png)
    page = to_html(report_md() + "\n![elsewhere](../secret.png)\n", "t", tmp_path, SQLITE)
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="memory"' in page
    assert '<p class="plots">' in page
    assert re.findall(r'(?:src|href)="(?!data:)([^"]*)"', page) == ["../secret.png"]  # only the file not beside it
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page


def test_numbers_have_thousands_separators_and_their_columns_are_right_aligned():
    page = to_html(report_md(), "t", links=SQLITE)
    assert '<td class="num">22,713,986</td>' in page and '<td class="num">109,483,778</td>' in page
    assert '<th class="num"><span>accuracy</span></th>' in page and '<td class="num">0.8731</td>' in page
    assert '<td class="num">–</td>' in page  # a missing value stays in its column's alignment
    assert "<td>lora</td>" in page and "<td>FINISHED</td>" in page and '<div class="scroll"><table>' in page


def test_markdown_is_rendered_by_a_library_and_its_text_never_becomes_html():
    page = to_html("# T\n\n| a | b |\n|---|---|\n| 1 | <x> |\n\n![plot](p.png)\n", "a <title>")
    assert "<h1>T</h1>" in page and page.count("<td") == 2 and "&lt;x&gt;" in page
    assert '<img src="p.png" alt="plot"' in page and "<title>a &lt;title&gt;</title>" in page
    assert "<section" not in page  # no Answer section, no box


# --------------------------------------------------------------------------- in a real browser
# Appended to a copy of the page: what the browser laid out, written into the DOM that --dump-dom prints.
PROBE = """<script>
const box = document.querySelector("section.answer"), table = document.querySelector("table");
const img = document.querySelector("img");
document.body.dataset.probe = JSON.stringify({
  text: box.innerText, top: box.getBoundingClientRect().top, height: box.getBoundingClientRect().height,
  tableTop: table.getBoundingClientRect().top, viewport: window.innerHeight, imageWidth: img.naturalWidth,
  warnings: getComputedStyle(box.querySelector(".warnings")).backgroundColor});
</script>"""


@pytest.mark.slow
def test_a_browser_shows_the_answer_and_its_warnings_first(tmp_path, chromium):
    import matplotlib.image

    matplotlib.image.imsave(tmp_path / "memory.png", [[[0.2, 0.4, 0.8]] * 6] * 4)
    page = to_html(report_md(), "demo", tmp_path, SQLITE)
    (tmp_path / "memory.png").unlink()  # the page must not need it any more
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("</body>", PROBE + "</body>"))
    shown = chromium(probed.as_uri(), "--dump-dom")
    assert shown.returncode == 0, shown.stderr[-2000:]
    [probe] = re.findall(r'data-probe="([^"]*)"', shown.stdout)
    seen = json.loads(html.unescape(probe))
    assert "Best overall: lora with lr=0.0005: accuracy 0.8731" in seen["text"]
    assert "edge_of_range: the best lr, 0.0005, is the top of its searched range" in seen["text"]
    assert "few_trials: only 2 trials finished <in time>." in seen["text"]
    assert 0 < seen["top"] < seen["top"] + seen["height"] < min(seen["tableTop"], seen["viewport"])  # first screen
    assert seen["warnings"] == "rgb(255, 247, 224)" and seen["imageWidth"] == 6  # styled; the embedded plot
