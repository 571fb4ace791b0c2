"""The report stage: reports/index.html opened in a real headless chromium, two
commits compared by the page and by ``dvc metrics diff``, and ``dvc plots``.

One tiny copy of the repository (module fixture) is run by ``dvc repro`` and
committed; then a training param changes, ``dvc repro`` reruns what it must
(the report included) and that is committed too. The page must show the new
values beside the old ones with the change's right sign, exactly as DVC does.
Its screenshot is kept in test-artifacts/report.png (git-ignored).
"""

from __future__ import annotations

import html.parser
import json
import math
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from chromium import Browser
from conftest import clone_run
from dlpipe.report import compare, page
from dlpipe.report.registry import MODELS
from dlpipe.training import lr_finder
from dlpipe.training.lr_finder import curve_path
from dlpipe.workflow_graph import load_stages

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
INDEX = "reports/index.html"
HOUSES_METRICS = "reports/metrics/houses.json"


# --------------------------------------------------------------------------- helpers


def sh(cmd: list[str], repo: Path, env: dict, timeout: int = 900) -> tuple[str, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-6000:]}"
    return out, time.perf_counter() - start


def stdout_json(cmd: list[str], repo: Path, env: dict) -> dict:
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    return json.loads(out[out.index("{"):out.rindex("}") + 1])


def all_metrics(repo: Path) -> dict[str, dict]:
    return {p.relative_to(repo).as_posix(): json.loads(p.read_text())
            for p in sorted((repo / "reports/metrics").glob("*.json"))}


class _Rows(html.parser.HTMLParser):
    """The summary table's rows: {(file, key): {value, old, change, change_text, class}}."""

    def __init__(self):
        super().__init__()
        self.rows: dict[tuple[str, str], dict] = {}
        self.row: dict | None = None
        self.cell: str | None = None
        self.in_summary = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.in_summary = attrs.get("id") == "metrics-summary"
        elif tag == "tr" and self.in_summary and "data-key" in attrs:
            self.row = self.rows.setdefault((attrs["data-file"], attrs["data-key"]), {})
        elif tag == "td" and self.row is not None:
            classes = (attrs.get("class") or "").split()
            for name in ("value", "old", "change"):
                if name in classes:
                    self.cell = name
                    value = attrs.get("data-value")
                    self.row[name] = float(value) if value else None
                    if name == "change":
                        self.row["class"] = classes[-1]
                    self.row[f"{name}_text"] = ""

    def handle_data(self, data):
        if self.row is not None and self.cell:
            self.row[f"{self.cell}_text"] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None
        elif tag == "tr":
            self.row = None
        elif tag == "table":
            self.in_summary = False


def summary(html_text: str) -> dict[tuple[str, str], dict]:
    parser = _Rows()
    parser.feed(html_text)
    return parser.rows


def shown_number(text: str) -> float:
    return float(text.replace(",", "").split("(")[0].strip())


# --------------------------------------------------------------------------- the graph and the pieces


def test_the_report_shows_every_metrics_file_and_lr_record_the_graph_makes():
    """The report stage's deps are derived from the registry (dlpipe.declare); what can still go
    wrong is a new metrics file or range test that no registry entry shows."""
    stages = {stage.name: stage for stage in load_stages(REPO / "dvc.yaml")}
    outs = {out for stage in stages.values() for out in stage.outs}
    shown = {path for model in MODELS for path in model.files()}
    assert stages["report"].outs == (INDEX,)
    assert shown <= set(stages["report"].deps)
    for out in outs:
        if out.startswith("reports/metrics/") or (
                out.startswith("reports/lr_find/") and out.endswith(".json") and not out.endswith("_curve.json")):
            assert out in shown, f"the report shows no {out}"


def test_every_lr_find_stage_declares_its_curve_with_the_log_x_template():
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    template = json.loads((REPO / ".dvc/plots/lr_find_logx.json").read_text())
    line = template["layer"][0]["encoding"]["x"]
    assert line["scale"]["type"] == "log" and line["field"] == "<DVC_METRIC_X>"
    assert template["data"]["values"] == "<DVC_METRIC_DATA>"
    found = 0
    for name, stage in spec.items():
        outs = [p if isinstance(p, str) else next(iter(p)) for p in stage.get("outs", [])]
        records = [p for p in outs if p.startswith("reports/lr_find/") and p.endswith(".json")]
        for record in records:
            found += 1
            plots = {next(iter(p)): next(iter(p.values())) for p in stage.get("plots", []) if isinstance(p, dict)}
            curve = curve_path(Path(record)).as_posix()
            assert curve in plots, f"{name}: {curve} not declared as a plot"
            assert plots[curve]["template"] == "lr_find_logx" and plots[curve]["x"] == "lr", plots[curve]
    assert found >= 2


def test_the_template_ships_with_the_package():
    assert (page.TEMPLATES / "index.html.j2").is_file()
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dlpipe = ["report/templates/*.j2"]' in pyproject


def test_outside_git_the_page_shows_values_alone(tmp_path):
    head, comparison = compare.compare(tmp_path)
    assert head is None and comparison.baseline is None and not comparison.metrics
    assert "not a git repository" in comparison.note
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    head, comparison = compare.compare(tmp_path)
    assert head is None and "no commit yet" in comparison.note


def lr_record(losses: np.ndarray, rule: str) -> dict:
    lrs = np.logspace(-5, 0, len(losses))
    return {"lrs": lrs.tolist(), "losses": losses.tolist(), **lr_finder.suggest(lrs, losses, rule)}


def test_disagreeing_rules_are_marked_beside_their_range_test(tmp_path):
    """A record whose rules disagree gets its cautions printed in its own card; one whose
    rules agree gets none."""
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    x = np.linspace(-5, 0, 100)  # log10 of the swept LR
    # Flat, a fall over one decade, a rise: the rules agree.
    descent = np.select([x < -3, x < -2], [2.0, 2.0 - 1.5 * (x + 3)], 0.5 + 5 * (x + 2) ** 2)
    spiked = 1.0 - 0.5 * np.tanh((x + 3) / 1.0) + 3 * np.clip(x + 1, 0, None) ** 2
    spiked[int(np.argmin(spiked)) + 2] += 0.5  # its fall fools the steepest point past the minimum
    records = {"houses": lr_record(spiked, "steepest"), "lenet": lr_record(descent, "valley")}
    assert records["houses"]["disagreement"]["flagged"] and records["houses"]["past_min"] == ["steepest"]
    assert not records["lenet"]["disagreement"]["flagged"] and not records["lenet"]["past_min"]
    by_name = {model.name: model for model in MODELS}
    for name, record in records.items():
        for path, value in ((by_name[name].metrics, {"value": 1.0}), (by_name[name].lr_finds[0].json, record)):
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(json.dumps(value))
    html_text = page.build(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    cards = {card[card.index("<h3>") + 4:card.index("</h3>")]: card for card in html_text.split('<div class="card')[1:]
             if "<h3>" in card}
    houses = cards[f"LR range test: {by_name['houses'].lr_finds[0].label}"]
    cautions = re.findall(r'<p class="note caution">(.*?)</p>', houses)
    assert len(cautions) == 2
    assert "at or past the loss minimum" in cautions[0] and "the rules disagree" in cautions[1]
    assert f"{records['houses']['disagreement']['ratio']:.3g}x" in cautions[1]
    assert 'class="note caution"' not in cards[f"LR range test: {by_name['lenet'].lr_finds[0].label}"]


def test_numbers_are_shown_for_people():
    assert page.fmt(0.98885792) == "0.9889"
    assert page.fmt(359) == "359" and page.fmt(1459.0) == "1459" and page.fmt(123456) == "123,456"
    assert page.fmt(None) == "–"
    assert page.fmt_diff(-0.0798, 0.358) == "-0.0798 (-22.3%)"
    assert page.fmt_diff(0.0, 0.5) == "0" and page.fmt_diff(None, None) == "–"
    assert page.direction_class(-0.1, "lower") == "better" and page.direction_class(-0.1, "higher") == "worse"
    assert page.direction_class(0.0, "lower") == "same" and page.direction_class(0.2, "") == "same"


# --------------------------------------------------------------------------- two commits


@dataclass
class TwoCommits:
    repo: Path
    env: dict
    first: dict  # metrics after the first commit's run
    second: dict
    html_first: str  # the page of the first run (no earlier results)
    html_second: str  # the page of the second run, before its commit
    html_committed: str  # the report rerun after the second commit


@pytest.fixture(scope="module")
def two_commits(tiny_dvc_run, tmp_path_factory) -> TwoCommits:
    """A copy of conftest's tiny run (a full ``dvc repro`` of a tiny commit), committed, then
    run again with more houses epochs and committed again."""
    first, html_first = all_metrics(tiny_dvc_run.repo), (tiny_dvc_run.repo / INDEX).read_text()
    repo, env = clone_run(tiny_dvc_run, tmp_path_factory.mktemp("report") / "repo")
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "tiny run"], repo, env)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["houses"]["train"]["epochs"] += 3  # patience 0 in the tiny params: every epoch runs
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out, seconds = sh(["dvc", "repro"], repo, env)
    print(f"\n[report timing] second dvc repro (houses epochs +3): {seconds:.1f} s")
    assert "Running stage 'report'" in out
    second, html_second = all_metrics(repo), (repo / INDEX).read_text()
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "commit", "-qm", "more epochs"], repo, env)

    _, seconds = sh(["python", "-m", "dlpipe", "report"], repo, env)
    print(f"[report timing] report stage alone: {seconds:.1f} s")
    return TwoCommits(repo, env, first, second, html_first, html_second, (repo / INDEX).read_text())


def test_first_report_has_no_earlier_values_and_says_why(two_commits):
    rows = summary(two_commits.html_first)
    assert rows and all(row.get("old") is None and "change" not in row for row in rows.values())
    assert "values are shown alone" in two_commits.html_first
    for (path, key), row in rows.items():
        assert row["value"] == two_commits.first[path][key]


def test_report_and_dvc_metrics_diff_show_the_change_with_its_sign(two_commits):
    repo, env = two_commits.repo, two_commits.env
    old, new = two_commits.first[HOUSES_METRICS]["val_rmsle"], two_commits.second[HOUSES_METRICS]["val_rmsle"]
    assert old != new

    diff = stdout_json(["dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"], repo, env)
    dvc_change = diff[HOUSES_METRICS]["val_rmsle"]
    assert dvc_change["old"] == old and dvc_change["new"] == new
    assert dvc_change["diff"] == pytest.approx(new - old, abs=1e-12)

    for html_text in (two_commits.html_second, two_commits.html_committed):
        row = summary(html_text)[(HOUSES_METRICS, "val_rmsle")]
        assert row["value"] == new and row["old"] == old
        assert row["change"] == pytest.approx(dvc_change["diff"], abs=1e-12)
        shown = shown_number(row["change_text"])
        assert math.copysign(1, shown) == math.copysign(1, dvc_change["diff"]), row
        assert shown == pytest.approx(dvc_change["diff"], rel=5e-3)
        assert row["class"] == ("better" if new < old else "worse")  # lower RMSLE is better
        # LeNet's params did not change: same values, no change
        lenet = summary(html_text)[("reports/metrics/lenet.json", "test_accuracy")]
        assert lenet["old"] == lenet["value"] and lenet["change"] == 0 and lenet["class"] == "same"

    # Before the commit the baseline is HEAD; after it (workspace = HEAD) the commit before.
    assert "dvc metrics diff HEAD<" in two_commits.html_second.replace("</code>", "<")
    assert "dvc metrics diff HEAD~1<" in two_commits.html_committed.replace("</code>", "<")
    # The params that changed, from `dvc params diff`
    for html_text in (two_commits.html_second, two_commits.html_committed):
        assert "houses.train.epochs" in html_text.split('id="params-changed"')[1].split("</section>")[0]


def test_dvc_plots_show_and_diff_render_every_declared_plot(two_commits):
    repo, env = two_commits.repo, two_commits.env
    for cmd in (["dvc", "plots", "show", "--json"], ["dvc", "plots", "diff", "HEAD~1", "--json"]):
        shown = stdout_json(cmd, repo, env)
        assert not shown.get("errors"), shown.get("errors")
        plots = shown["data"]
        for lr_json in ("reports/lr_find/houses.json", "reports/lr_find/lenet.json"):
            entry = plots[curve_path(Path(lr_json)).as_posix()][0]
            assert entry["type"] == "vega" and not entry.get("errors"), entry.get("errors")
            content = entry["content"]
            assert content["layer"][0]["encoding"]["x"]["scale"]["type"] == "log"
            records = content["data"]["values"]
            assert records and {"lr", "loss", "suggested_lr", "rev"} <= set(records[0])
        assert plots["reports/plots/lenet/confusion.json"][0]["content"]["data"]["values"]
        assert any(key.startswith("lenet_") for key in plots)  # the learning curves
        for key, entries in plots.items():
            for entry in entries:
                assert not entry.get("errors"), (key, entry["errors"])
    revisions = {rev for entries in plots.values() for entry in entries for rev in entry.get("revisions", [])}
    assert {"HEAD~1", "workspace"} <= revisions


def test_a_fresh_clone_with_no_remote_diffs_metrics_params_and_plots(two_commits, tmp_path):
    """The metrics, DVCLive series and plot data are in git (cache: false): a clone with no
    DVC cache and no remote compares the two commits, and so does its report."""
    src, env = two_commits.repo, two_commits.env
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(src), str(clone)], tmp_path, env)
    assert not (clone / ".dvc" / "cache").exists()

    here = stdout_json(["dvc", "metrics", "diff", "HEAD~1", "--json"], clone, env)
    there = stdout_json(["dvc", "metrics", "diff", "HEAD~1", "--json"], src, env)
    assert here == there and here[HOUSES_METRICS]["val_rmsle"]["old"] == two_commits.first[HOUSES_METRICS]["val_rmsle"]
    assert "dvclive/train_houses/metrics.json" in here  # the training summary changed too
    params = stdout_json(["dvc", "params", "diff", "HEAD~1", "--json"], clone, env)
    assert params["params.yaml"]["houses.train.epochs"]["new"] == params["params.yaml"]["houses.train.epochs"]["old"] + 3
    plots = stdout_json(["dvc", "plots", "diff", "HEAD~1", "--json"], clone, env)
    drawn = {key for key, entries in plots["data"].items() for entry in entries
             if entry["type"] == "vega" and not entry.get("errors") and entry["content"]["data"]["values"]}
    declared = yaml.safe_load((clone / "dvc.yaml").read_text())["plots"]
    assert {next(iter(group)) for group in declared} <= drawn  # every learning curve, from git alone
    for key, entries in plots["data"].items():
        for entry in entries:
            if entry.get("errors"):  # only pictures are missing: they live in the DVC cache
                assert Path(key).suffix == ".png", (key, entry["errors"])

    sh(["python", "-m", "dlpipe", "report"], clone, env)
    rows = summary((clone / INDEX).read_text())
    row = rows[(HOUSES_METRICS, "val_rmsle")]
    assert row["old"] == two_commits.first[HOUSES_METRICS]["val_rmsle"]
    assert row["value"] == two_commits.second[HOUSES_METRICS]["val_rmsle"]


def test_dvc_metrics_show_fits_a_terminal(tiny_dvc_run):
    """One table lists every metrics file's keys side by side: the headline files and the
    DVCLive summaries keep it under 200 columns (the details files are not DVC metrics)."""
    out, _ = sh(["dvc", "metrics", "show"], tiny_dvc_run.repo, tiny_dvc_run.env)
    lines = out.splitlines()
    assert len(lines) > 5 and any(line.startswith("reports/metrics/dcgan.json") for line in lines), out
    width = max(len(line) for line in lines)
    print(f"\n[report] dvc metrics show: {width} columns")
    assert width < 200, out


def test_a_metrics_file_the_earlier_commit_lacks_is_named_with_the_reason(two_commits, tmp_path):
    src, env = two_commits.repo, two_commits.env
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(src), str(clone)], tmp_path, env)
    lenet = "reports/metrics/lenet.json"
    sh(["git", "rm", "-q", "--cached", lenet], clone, env)
    sh(["git", "commit", "-qm", "lenet metrics not committed"], clone, env)
    sh(["git", "add", lenet], clone, env)
    sh(["git", "commit", "-qm", "lenet metrics committed again"], clone, env)
    _, comparison = compare.compare(clone)
    assert comparison.baseline == "HEAD~1"
    assert comparison.old(lenet, "test_accuracy") is None and comparison.old(HOUSES_METRICS, "val_rmsle") is not None
    assert set(comparison.missing) == {lenet}
    assert f"does not hold {lenet}" in comparison.missing[lenet]


# --------------------------------------------------------------------------- in a real browser


def test_report_in_headless_chromium(two_commits, chromium):
    repo = two_commits.repo
    url = (repo / INDEX).resolve().as_uri()
    with Browser(chromium) as browser:
        tab = browser.open(url)
        images = tab.evaluate("[...document.images].map(i => ({w: i.naturalWidth, done: i.complete, alt: i.alt}))")
        cells = tab.evaluate("""[...document.querySelectorAll('table.metrics td.value')].map(td => ({
            file: td.closest('tr').dataset.file || td.closest('table').dataset.file,
            key: td.closest('tr').dataset.key, value: td.dataset.value, text: td.textContent.trim(),
            summary: td.closest('table').id === 'metrics-summary'}))""")
        sections = tab.evaluate("[...document.querySelectorAll('section.model')].map(s => s.id)")
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(ARTIFACTS / "report.png")
        errors, requests = tab.console_errors(), tab.requested_urls()

    assert len(images) >= 6, images
    assert all(image["done"] and image["w"] > 0 for image in images), [i for i in images if not i["w"]]
    assert errors == [], errors
    # Self-contained: nothing but the page itself and its data: URIs was loaded.
    assert [u for u in requests if u != url and not u.startswith("data:")] == []

    stages = load_stages(repo / "dvc.yaml")
    outs = {out for stage in stages for out in stage.outs}
    assert sections == [m.name for m in MODELS if page.declared(m.metrics, outs)]
    shown = {}
    for cell in cells:
        shown.setdefault((cell["file"], cell["key"]), []).append(cell)
    for path, metrics in all_metrics(repo).items():
        headline = {h.key for m in MODELS if m.metrics == path for h in m.headline}
        for key, value in metrics.items():
            assert (path, key) in shown, f"{path} {key} not in the page's metrics tables"
            for cell in shown[(path, key)]:
                assert float(cell["value"]) == value
                assert shown_number(cell["text"]) == pytest.approx(value, rel=1e-3, abs=1e-12)
            if key in headline:
                assert any(cell["summary"] for cell in shown[(path, key)]), (path, key)
    shot = (ARTIFACTS / "report.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000
