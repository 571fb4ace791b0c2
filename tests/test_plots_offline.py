"""``dvc plots show`` / ``dvc plots diff`` pages that draw with no network.

``.dvc/config`` points ``plots.html_template`` at the page template that
``python -m dlpipe.plots_template`` writes at set-up (Vega, Vega-Lite and
Vega-Embed inline, from the pinned package). In a copy of conftest's tiny run:
without the template ``dvc plots show`` fails and writes no page; with it,
both pages open in headless chromium with every Vega chart drawn (its marks in
the Vega scenegraph, a canvas or svg in its div), no console error and no
request beyond the page's own folder. Screenshots: test-artifacts/plots_*.png.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path


from chromium import Browser
from conftest import clone_run, run
from dlpipe import plots_template

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
TEMPLATE = "build/plots_template.html"
MISSING = "HTML template has to contain '{plot_divs}'"  # DVC's words when the file is absent

# Each chart's embed result, once drawn: its id, its error, the items of its own marks (role
# "mark": lines, points, rects, ...; not axes or legends) in the Vega scenegraph, and its canvas/svg.
CHARTS_JS = """Promise.all(window.dvcPlots || []).then(results => results.map(r => {
  const marks = node => (node.items || []).reduce((n, item) =>
      n + (item.items || []).reduce((m, child) => m + marks(child), 0),
      node.role === "mark" && node.marktype !== "group" ? (node.items || []).length : 0);
  const div = document.getElementById(r.id);
  const drawn = div && div.querySelector("canvas, svg");
  const box = drawn ? drawn.getBoundingClientRect() : {width: 0, height: 0};
  return {id: r.id, error: r.error || null, marks: r.view ? marks(r.view.scenegraph().root) : 0,
          drawn: drawn ? drawn.tagName.toLowerCase() : null, width: box.width, height: box.height,
          note: div && div.querySelector(".dvc-plot-error") ? div.querySelector(".dvc-plot-error").textContent : null};
}))"""


def dvc(args: list[str], repo: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)


def open_charts(chromium: str, page: Path, shot: Path) -> tuple[list[dict], list[str], list[str], list[str]]:
    """(charts, console errors, requested URLs, library versions) of one page in headless chromium."""
    url = page.resolve().as_uri()
    with Browser(chromium) as browser:
        tab = browser.open(url)
        charts = tab.evaluate(CHARTS_JS)
        versions = tab.evaluate("[vega.version, vegaLite.version, vegaEmbed.version]")
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(shot)
        return charts, tab.console_errors(), tab.requested_urls(), versions


def embedded_ids(page: Path) -> list[str]:
    """The ids of the divs whose script calls vegaEmbed (dvc_render's VegaRenderer.DIV)."""
    return re.findall(r"vegaEmbed\('#([^']+)'", page.read_text(encoding="utf8"))


# --------------------------------------------------------------------------- the pieces


def test_the_config_points_at_the_generated_git_ignored_template():
    assert plots_template.configured_path(REPO) == REPO / TEMPLATE  # relative to .dvc/, as DVC joins it
    ignored = subprocess.run(["git", "check-ignore", "-q", TEMPLATE], cwd=REPO)
    assert ignored.returncode == 0, f"{TEMPLATE} is generated at set-up: git must ignore it"
    assert f"PLOTS_TEMPLATE := {TEMPLATE}\n" in (REPO / "Makefile").read_text()  # make setup's target


def test_the_template_inlines_the_libraries_and_loads_nothing():
    text = plots_template.render()
    assert text.count("{plot_divs}") == 1
    assert "{scripts}" not in text  # DVC's CDN <script> tags go there: left out
    assert not re.search(r"<script[^>]*\bsrc=", text)
    for library, version, _ in plots_template.library_files():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), (library, version)
        assert f"/* {library} {version} */" in text


# --------------------------------------------------------------------------- dvc plots show / diff, in a browser


def test_dvc_plots_pages_draw_every_chart_offline(tiny_dvc_run, chromium, tmp_path):
    start = time.perf_counter()
    repo, env = clone_run(tiny_dvc_run, tmp_path / "repo")
    assert not (repo / TEMPLATE).exists()  # a fresh copy: set-up has not run here

    # Without the template: one error and no page (not a page of blank charts).
    proc = dvc(["plots", "show"], repo, env)
    assert proc.returncode != 0 and MISSING in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert not (repo / "dvc_plots" / "index.html").exists()

    assert plots_template.main(["--repo", str(repo)]) == 0  # what `make setup` runs
    assert (repo / TEMPLATE).is_file()
    run(["git", "add", "-A"], repo, env)  # HEAD = this run's outputs, so that diff has two revisions
    run(["git", "commit", "-qm", "tiny run"], repo, env)

    proc = dvc(["plots", "show", "--json"], repo, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = json.loads(proc.stdout[proc.stdout.index("{"):])["data"]
    vega_plots = sorted(key for key, entries in shown.items() if any(e["type"] == "vega" for e in entries))
    assert len(vega_plots) >= 10, vega_plots

    pages = {}
    for name, args in (("show", ["plots", "show"]), ("diff", ["plots", "diff", "HEAD", "-o", "dvc_plots_diff"])):
        proc = dvc(args, repo, env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        pages[name] = repo / ("dvc_plots" if name == "show" else "dvc_plots_diff") / "index.html"
        assert "cdn.jsdelivr.net/npm/vega@" not in pages[name].read_text(encoding="utf8")
    assert len(embedded_ids(pages["show"])) == len(vega_plots)

    for name, page in pages.items():
        ids = embedded_ids(page)
        charts, errors, requests, versions = open_charts(chromium, page, ARTIFACTS / f"plots_{name}.png")
        assert sorted(c["id"] for c in charts) == sorted(ids), (name, charts, ids)
        for chart in charts:
            assert chart["error"] is None and chart["note"] is None, (name, chart)
            assert chart["marks"] > 0, (name, chart)
            assert chart["drawn"] in ("canvas", "svg") and chart["width"] > 50 and chart["height"] > 50, (name, chart)
        assert errors == [], (name, errors)
        folder = page.parent.resolve().as_uri() + "/"
        assert [u for u in requests if not (u.startswith(folder) or u.startswith("data:"))] == [], (name, requests)
        assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions), versions
    print(f"\n[plots timing] {len(vega_plots)} charts, show and diff pages: {time.perf_counter() - start:.1f} s")


def test_a_chart_that_cannot_be_drawn_says_so_in_its_place(chromium, tmp_path):
    """The template's vegaEmbed wrapper: a failed chart shows its error, not a blank area."""
    template = plots_template.write(tmp_path / "template.html").read_text(encoding="utf8")
    good = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "mark": "bar",
            "data": {"values": [{"a": "x", "b": 1}, {"a": "y", "b": 2}]},
            "encoding": {"x": {"field": "a", "type": "nominal"}, "y": {"field": "b", "type": "quantitative"}}}
    bad = dict(good, transform=[{"calculate": "no_such_function(datum.b)", "as": "c"}])
    divs = "".join(f'<div id="{name}"><script>vegaEmbed(\'#{name}\', {json.dumps(spec)});</script></div>'
                   for name, spec in (("good", good), ("bad", bad)))
    page = tmp_path / "page" / "index.html"
    page.parent.mkdir()
    page.write_text(template.replace("{refresh_tag}", "").replace("{plot_divs}", divs), encoding="utf8")
    charts, errors, requests, _ = open_charts(chromium, page, tmp_path / "shot.png")
    by_id = {chart["id"]: chart for chart in charts}
    assert by_id["good"]["error"] is None and by_id["good"]["marks"] == 2
    assert by_id["bad"]["error"] and "no_such_function" in by_id["bad"]["note"], by_id["bad"]
    assert by_id["bad"]["marks"] == 0 and by_id["bad"]["drawn"] is None
    assert any("no_such_function" in e for e in errors), errors
    assert requests == [page.resolve().as_uri()]
