"""repeatlab/report.py: the report of a synthetic study (files, figures, a self-contained page, findings whose every
number comes from analysis.json, the CSV), partial input, and the page rendered by headless Chromium."""

from __future__ import annotations

import base64
import csv
import html
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from repeatlab import report, storage
from repeatlab.cli import main as repeatlab_main

sys.path.insert(0, os.path.dirname(__file__))
import synthetic_study as syn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The synthetic study (controls, a little noise) analysed and reported through `repeatlab report`."""
    root = str(tmp_path_factory.mktemp("report-root"))
    records = syn.synthetic_records(controls=True, noise=0.002, rng_seed=3)
    syn.write_study(root, "syn", records)
    assert repeatlab_main(["report", "--root", root, "--study", "syn"]) == 0
    study_dir = Path(root) / "studies" / "syn"
    analysis = storage.read_json(str(study_dir / "analysis.json"))
    return {"records": records, "analysis": analysis, "out": study_dir / "report"}


def is_png(data: bytes, min_bytes: int = 5000) -> bool:
    return data[:8] == PNG_MAGIC and len(data) >= min_bytes


def html_findings(text: str) -> list[str]:
    section = text.split('<h2 id="findings">Findings</h2><ul>', 1)[1].split("</ul>", 1)[0]
    return [html.unescape(item) for item in re.findall(r"<li>(.*?)</li>", section, flags=re.DOTALL)]


def md_findings(text: str) -> list[str]:
    section = text.split("## Findings\n\n", 1)[1].split("\n\n", 1)[0]
    return [line[2:] for line in section.splitlines()]


# ----------------------------------------------------------------------------------------------------------------------
# Files and figures


def test_every_file_and_figure_is_written(study):
    out = study["out"]
    for name in ("index.html", "report.md", "results.csv"):
        assert (out / name).stat().st_size > 0
    md = (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    assert "figure skipped" not in md and "figure skipped" not in page
    for fid in report.FIGURES:
        png = (out / f"fig-{fid}.png").read_bytes()
        assert is_png(png), fid
        # inlined, so the Kubeflow UI renders the Markdown artifact on its own
        assert base64.b64encode(png).decode() in md and f"(fig-{fid}.png)" not in md
    assert set(report.FIGURES) == {
        "loss_vs_epochs",
        "multiplier_heatmap",
        "repeated_loss",
        "learning_curves",
        "prefix_heads",
        "per_copy_loss",
        "region",
    }
    for heading in (
        "Split composition of corpus synthetic",
        "Run-to-run noise of the test loss",
        "Baseline checks",
        "Worst E per (N, f), test loss: damage ± standard error, significant beyond 3 sigma",
        "Damage at every repeated point",
        "In-context learning at the f = 0 baselines",
        "Mechanism evidence",
    ):
        assert heading in md and heading in page, heading
    assert "more than" not in md  # no bound phrased as a multiplier


def test_page_is_self_contained(study):
    page = (study["out"] / "index.html").read_text()
    assert not re.search(r"""\b(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", page, flags=re.IGNORECASE)
    assert not re.search(r"url\(|@import|<script|<link|<iframe", page, flags=re.IGNORECASE)
    images = re.findall(r'<figure id="fig-([a-z_]+)"><img alt="[^"]*" src="([^"]*)"', page)
    assert [fid for fid, _ in images] == report.FIGURES
    assert len(re.findall(r"<img\b", page)) == len(report.FIGURES)
    for fid, src in images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix) :], validate=True)
        assert png == (study["out"] / f"fig-{fid}.png").read_bytes()


# ----------------------------------------------------------------------------------------------------------------------
# Every number in the findings comes from the analysis

NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _tolerance(token: str) -> float:
    """Half a unit in the last printed digit: 2.36 -> 0.005, 4.06e+03 -> 5, 64 -> 0.5."""
    mantissa, _, exponent = token.lstrip("+-").partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    return 0.5 * 10.0 ** (int(exponent or 0) - decimals)


def _numbers_in(obj, out: list[float]) -> list[float]:
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers_in(v, out)
    elif isinstance(obj, list):
        out.append(float(len(obj)))  # counts ("4 model sizes", "22 of 60 curves") are lengths
        for v in obj:
            _numbers_in(v, out)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out.append(float(obj))
    return out


def close(token: str, value: float | None) -> bool:
    return value is not None and abs(abs(float(token)) - abs(value)) <= _tolerance(token) * (1 + 1e-9) + 1e-12


def test_findings_are_the_same_in_every_format(study):
    out, analysis = study["out"], study["analysis"]
    assert md_findings((out / "report.md").read_text()) == analysis["findings"]
    assert html_findings((out / "index.html").read_text()) == analysis["findings"]
    assert len(analysis["findings"]) >= 1 + 1 + 8 + 4  # summary, baseline fit, worst per (N, f), 4 region edges


def test_every_number_in_the_findings_is_in_the_analysis(study):
    analysis = study["analysis"]
    pool = np.abs(np.array(_numbers_in(analysis, [])))
    for line in analysis["findings"]:
        for token in NUMBER.findall(line):
            gap = float(np.min(np.abs(pool - abs(float(token)))))
            assert gap <= _tolerance(token) * (1 + 1e-9) + 1e-12, (token, line)


WORST = re.compile(
    r"At N = (?P<n>\S+), f = (?P<f>\S+), the worst E is (?P<e>\S+): test loss (?P<damage>[-+][\d.]+)"
    r" nats(?: \+- (?P<se>[\d.]+) \((?P<z>[-\d.]+) sigma: (?P<verdict>significant|within the noise, not "
    r"significant)\)| \(no noise estimate: significance unknown\))(?P<clauses>.*?); effective size: "
    r"(?:(?P<mult>[\d.]+)x smaller effective model \((?:from the fit|interpolated between the baselines)\)|"
    r"(?P<note>not meaningful for this study: [^;]+))(?:; repeated-subset loss (?P<rl>[\d.]+))?\.$"
)
NOISE = re.compile(
    r"Run-to-run noise of the test loss \(from extra seeds and E <= 4 points\): (.*)\. A damage "
    r"counts only beyond 3 standard errors; more seeds at the worst E narrow them\.$"
)
ICL = re.compile(r"In-context learning at the f = 0 baselines \(late minus early loss\): (.*)\.$")
MECH = re.compile(
    r"Mechanism at N = (\S+), f = 0 -> f = (\S+), E = (\S+) \(the worst E\): best previous-token head "
    r".*, best prefix-matching head .*, copy gain \(copy 1 minus copies 2\.\.n, nats\) .*; baseline: "
    r".*; worst E: .*\.$"
)
BASELINE = re.compile(
    r"Baseline test loss fit: L\(N\) = (\S+) \+ (\S+) \* N\^-(\S+) \(rms residual (\S+) nats\); "
    r"effective sizes come from it\.$"
)
EDGE = re.compile(
    r"f = (\S+): (left|right) edge of the poor-performance region "
    r"E = (\S+) \* N\^(\S+) \((\d+) sizes\)\.$"
)
EPOCHWISE = re.compile(
    r"f = (\S+): (\d+) of (\d+) learning curves rise mid-training \(largest rise (\S+) nats at "
    r"N = (\S+), E = (\S+)\); (\d+) fall again\.$"
)
SUMMARY = re.compile(r"(\d+) runs over (\d+) model size\(s\), fractions (.*)\.$")


def _check_multiplier(m: re.Match, entry: dict) -> None:
    """A stated multiplier is the analysis's N/N_eff; without one, the analysis's note, never a bound."""
    if entry["multiplier"] is None:
        assert m["mult"] is None and m["note"] == entry["multiplier_note"]
        assert m["note"].startswith("not meaningful for this study")
    else:
        assert m["note"] is None and close(m["mult"], entry["multiplier"])


def _check_damage(m: re.Match, entry: dict) -> None:
    assert close(m["damage"], entry["damage"])
    if entry["damage_se"] is None:
        assert m["se"] is None
    else:
        assert close(m["se"], entry["damage_se"]) and close(m["z"], entry["z"])
        assert (m["verdict"] == "significant") is entry["significant"] is (entry["z"] > 3)


def test_findings_state_the_analysis_values(study):
    analysis = study["analysis"]
    worst = {
        m: {(w["n_params"], w["fraction"]): w for w in analysis["worst"][m]}
        for m in ("test_loss", "copying", "prefix_matching")
    }
    regions = {r["fraction"]: r for r in analysis["regions"]}
    epochwise = {e["fraction"]: e for e in analysis["epochwise"]}
    seen_worst = set()
    for line in analysis["findings"]:
        if m := SUMMARY.match(line):
            s = analysis["summary"]
            assert (int(m[1]), int(m[2])) == (s["runs_used"], len(s["models"]))
            assert [float(f) for f in m[3].split(", ")] == s["fractions"]
        elif m := BASELINE.match(line):
            fit = analysis["baseline"]["test_loss"]["fit"]
            for token, value in zip(m.groups(), ("asymptote", "A", "alpha", "rms_residual")):
                assert close(token, fit[value]), (token, value)
        elif m := WORST.match(line):
            n = next(n for n, f in worst["test_loss"] if close(m["n"], n) and f == float(m["f"]))
            key = (n, float(m["f"]))
            w = worst["test_loss"][key]
            assert float(m["e"]) == w["epochs"]
            assert ("at the largest E" in m["clauses"] or "at the smallest E" in m["clauses"]) is (not w["interior"])
            _check_damage(m, w)
            _check_multiplier(m, w)
            assert close(m["rl"], w["repeated_loss"])
            # and the analysis is right: the stated worst E sits on the known peak of the synthetic damage
            assert abs(math.log(w["epochs"] / syn.peak_epochs(n))) <= syn.PLATEAU + math.log(2)
            seen_worst.add(key)
        elif m := EDGE.match(line):
            fe = regions[float(m[1])]["fits"][m[2]]
            assert close(m[3], fe["k"]) and close(m[4], fe["alpha"]) and int(m[5]) == fe["n_sizes"]
        elif m := EPOCHWISE.match(line):
            ew = epochwise[float(m[1])]
            assert (int(m[2]), int(m[3]), int(m[7])) == (ew["non_monotone_runs"], ew["runs"], ew["falls_again_runs"])
            assert close(m[4], ew["max_rise"]) and close(m[5], ew["max_rise_n_params"])
            assert float(m[6]) == ew["max_rise_epochs"]
        elif m := NOISE.match(line):
            rows = {r["n_params"]: r for r in analysis["noise"]["per_model"]}
            parts = m[1].split("; ")
            assert len(parts) == len(rows)
            for part, (n, row) in zip(parts, sorted(rows.items())):
                assert part.startswith(f"N = {n:.3g}: {row['sigma']:.3f} nats")
        elif m := ICL.match(line):
            assert len(m[1].split("; N = ")) == len(analysis["icl"])
        elif m := MECH.match(line):
            row = next(
                r
                for r in analysis["mechanism"]["at_worst"]
                if close(m[1], r["n_params"]) and float(m[2]) == r["fraction"] and float(m[3]) == r["epochs"]
            )
            assert row["previous_token_max"]["baseline"] is not None
        else:
            pytest.fail(f"a finding the test does not know: {line!r}")
    assert seen_worst == set(worst["test_loss"])


# ----------------------------------------------------------------------------------------------------------------------
# The CSV


def _csv_value(text: str):
    return None if text == "" else float(text)


def test_results_csv_rows_match_the_analysis_runs(study):
    with open(study["out"] / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == report.CSV_COLUMNS
    runs = {r["point_id"]: r for r in study["analysis"]["runs"]}
    records = {r["point_id"]: r for r in study["records"]}
    assert len(rows) == len(runs) == len(records)
    assert {row["point_id"] for row in rows} == set(runs) == set(records)
    for row in rows:
        run, rec = runs[row["point_id"]], records[row["point_id"]]
        tl = run["metrics"]["test_loss"]
        assert float(row["n_params"]) == run["n_params"] == rec["point"]["model"]["n_params_nonembed"]
        assert (float(row["fraction"]), float(row["epochs"]), int(row["seed"])) == (
            run["fraction"],
            run["epochs"],
            run["seed"],
        )
        assert row["control"] == str(run["control"])
        assert float(row["test_loss"]) == tl["value"] == rec["test_loss"]  # exact: floats round-trip through repr
        assert _csv_value(row["repeated_loss"]) == rec["repeated_loss"]
        assert float(row["copying"]) == rec["copying"]["mean_copies_2_to_last"]
        assert float(row["prefix_matching_top_mean"]) == rec["aggregates"]["prefix_matching_top_mean"]
        assert float(row["ood_loss"]) == rec["ood_loss"]
        for column in ("n_eff", "multiplier", "damage"):
            assert _csv_value(row[column]) == tl[column]
        assert row["extrapolated"] == ("" if tl["extrapolated"] is None else str(tl["extrapolated"]))


# ----------------------------------------------------------------------------------------------------------------------
# Partial input


def test_partial_report_without_baselines(tmp_path):
    records = syn.synthetic_records(sizes=(1e5, 1e6), fractions=(0.5,), epochs=(1.0, 32.0, 1024.0), baseline=False)
    root = str(tmp_path / "root")
    syn.write_study(root, "part", records, drop=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "fig-region.png").write_bytes(PNG_MAGIC + b"stale")  # from an earlier, complete report
    assert repeatlab_main(["report", "--root", root, "--study", "part", "--out", str(out)]) == 0
    page, md = (out / "index.html").read_text(), (out / "report.md").read_text()
    assert '<p class="partial" id="partial">Partial results: 1 of 6 expected points' in page
    assert "**Partial results: 1 of 6 expected points" in md
    assert "N_eff needs f = 0 runs" in page and "N_eff needs f = 0 runs" in md
    for fid in ("multiplier_heatmap", "region", "prefix_heads", "per_copy_loss"):
        assert f'id="fig-{fid}-skipped"' in page
        assert not (out / f"fig-{fid}.png").exists()  # the stale region figure is gone too
    for fid in ("loss_vs_epochs", "repeated_loss", "learning_curves"):
        assert is_png((out / f"fig-{fid}.png").read_bytes(), 1000)
    missing = records[-1]["point_id"]
    assert "Missing eval files" in page and missing in page and missing in md
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(records) - 1 and all(r["n_eff"] == "" and r["damage"] == "" for r in rows)


def test_report_cli_without_eval_records_is_one_line(tmp_path, capsys):
    rc = repeatlab_main(["report", "--root", str(tmp_path), "--study", "none"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------------------------------------------------
# Headless Chromium


def chromium(url: str, screenshot: Path, profile: Path, size: str = "1400,4000") -> tuple[int, str, list[str]]:
    """(exit code, DOM after load, console lines) of one headless Chromium run, killed after 60 s."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={profile}",
        f"--screenshot={screenshot}",
        f"--window-size={size}",
        "--dump-dom",
        url,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        dom, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("chromium did not finish within 60 s")
    console = [line for line in err.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    return proc.returncode, dom, console


@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH: the headless rendering check needs it")
def test_console_check_catches_errors(tmp_path):
    """The check below can fail: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><p>x</p><script>throw new Error("boom")</script></body></html>')
    rc, dom, console = chromium(bad.as_uri(), tmp_path / "bad.png", tmp_path / "profile", "400,300")
    assert rc == 0 and "<p>x</p>" in dom
    assert any("Uncaught Error: boom" in line for line in console)


@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH: the headless rendering check needs it")
def test_chromium_renders_the_report(study, tmp_path):
    import matplotlib.image

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    shot.unlink(missing_ok=True)
    rc, dom, console = chromium((study["out"] / "index.html").as_uri(), shot, tmp_path / "profile")
    assert rc == 0
    assert console == []  # no console messages and no uncaught errors: the page has no script at all
    assert "<h1>repeatlab study: syn</h1>" in dom and 'id="findings"' in dom
    sources = re.findall(r'<img\b[^>]*\bsrc="([^"]*)"', dom)
    assert len(sources) == len(report.FIGURES)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert is_png(base64.b64decode(src.split(",", 1)[1], validate=True))
    data = shot.read_bytes()
    assert is_png(data, 50_000)
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (4000, 1400)
    colourful = float(((pixels.max(-1) - pixels.min(-1)) > 0.25).mean())
    assert colourful > 0.01, f"only {colourful:.2%} coloured pixels: were the figures drawn?"


# ----------------------------------------------------------------------------------------------------------------------
# The first screen: the answer in words, then the figures with captions


def test_the_answer_states_where_how_much_and_for_which_sizes(study):
    """The synthetic study's known answer: damage at every size, 0.05 nats at f = 0.1 and 0.2 at f = 0.5 (the
    synthetic bump's maximum), worst where the bump peaks."""
    lines = report.answer_lines(study["analysis"])
    assert len(lines) == 3
    f01, f05, largest = lines
    sizes = ", ".join(f"{n:.3g}" for n in syn.SIZES)
    assert f01.startswith("When 10% of the training tokens are repeats (f = 0.1), repetition hurts 4 of 4 model sizes")
    assert f05.startswith(
        f"When 50% of the training tokens are repeats (f = 0.5), repetition hurts 4 of 4 model sizes (N = {sizes})"
    )
    worst = max((w for w in study["analysis"]["worst"]["test_loss"]), key=lambda w: w["damage"])
    assert abs(worst["damage"] - syn.DAMAGE[0.5]) < 0.02
    assert largest.startswith(
        f"The largest damage: {worst['damage']:+.3f} nats at N = {worst['n_params']:.3g}, "
        f"f = 0.5, E = {worst['epochs']:g}"
    )
    # where: the region's E range at f = 0.5 brackets the synthetic peak of every size
    low, high = map(float, re.search(r"between about (\S+) and (\S+)\.", f05).groups())
    peaks = [syn.PEAK_K * n**syn.PEAK_ALPHA for n in syn.SIZES]
    assert low < min(peaks) and high > max(peaks)


def test_no_significant_damage_is_said_plainly():
    analysis = {
        "summary": {"partial": False},
        "worst": {
            "test_loss": [
                {
                    "model": "a",
                    "n_params": 1e5,
                    "fraction": 0.5,
                    "epochs": 512.0,
                    "damage": 0.144,
                    "z": 2.1,
                    "significant": False,
                },
                {
                    "model": "b",
                    "n_params": 3e5,
                    "fraction": 0.5,
                    "epochs": 64.0,
                    "damage": 0.05,
                    "z": 0.4,
                    "significant": False,
                },
            ]
        },
    }
    assert report.answer_lines(analysis) == [
        "When 50% of the training tokens are repeats (f = 0.5), no model size (N = 1e+05, 3e+05) is measurably hurt: "
        "the largest damage is +0.144 nats of test loss at N = 1e+05, E = 512 (2.1 standard errors: below the 3 that "
        "tell damage from run-to-run noise)."
    ]
    assert report.answer_lines({"summary": {}, "worst": {"test_loss": []}})[0].startswith("No damage can be measured")


def test_the_page_opens_with_the_answer_then_captioned_figures(study):
    page = (study["out"] / "index.html").read_text()
    md = (study["out"] / "report.md").read_text()
    answer, figures, findings = (page.index('id="answer"'), page.index('id="figures"'), page.index('id="findings"'))
    assert page.index("<h1>") < answer < figures < findings
    for line in report.answer_lines(study["analysis"]):
        assert f"<p>{html.escape(line)}</p>" in page and line in md
    assert md.index("## The answer") < md.index("## Figures") < md.index("## Findings")
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert [html.unescape(c) for c in captions] == list(report.figure_captions().values())
    for caption in captions:  # a title, then exactly one sentence of what to see
        title, sentence = html.unescape(caption).split(". ", 1)
        assert sentence.endswith(".") and sentence.count(". ") == 0, caption


LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const width = window.innerWidth, height = window.innerHeight;
  const figures = [...document.querySelectorAll("figure img")].map(img => {
    const r = img.getBoundingClientRect();
    return {loaded: img.complete && img.naturalWidth > 0, width: r.width, height: r.height, left: r.left,
            right: r.right};
  });
  const answer = document.getElementById("answer").getBoundingClientRect();
  parent.postMessage(JSON.stringify({width, height, scrollWidth: document.documentElement.scrollWidth,
                                      answerTop: answer.top, answerBottom: answer.bottom, figures}), "*");
});
</script>"""
# Headless Chromium will not make a window narrower than 500 px: the page is measured in a frame of the device's size
# (a frame is a viewport of its own: media queries, vw units and the page's width all follow it).
DEVICE_FRAME = """<!DOCTYPE html><html><body style="margin:0">
<iframe src="probe.html" style="border:0;display:block;width:{w}px;height:{h}px"></iframe>
<script>window.addEventListener("message", e => {{
  const out = document.createElement("pre"); out.id = "layout"; out.textContent = e.data;
  document.body.appendChild(out);
}});</script></body></html>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH: the headless rendering check needs it")
@pytest.mark.parametrize("device,size", [("desktop", (1280, 800)), ("phone", (390, 844))])
def test_the_page_fits_desktop_and_phone_widths(study, tmp_path, device, size):
    """At each width: no horizontal scroll, every figure loaded, visible and inside the page's width, and the answer
    starts on the first screen. The page has no script of its own: a copy gets a measuring one."""
    import json

    import matplotlib.image

    (tmp_path / "probe.html").write_text(
        (study["out"] / "index.html").read_text().replace("</body>", LAYOUT_PROBE + "</body>")
    )
    frame = tmp_path / "device.html"
    frame.write_text(DEVICE_FRAME.format(w=size[0], h=size[1]))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"report-{device}.png"
    shot.unlink(missing_ok=True)
    window = (max(size[0], 500), size[1])
    rc, dom, console = chromium(frame.as_uri(), shot, tmp_path / "profile", f"{window[0]},{window[1]}")
    assert rc == 0 and console == []
    layout = json.loads(html.unescape(re.search(r'<pre id="layout">(.*?)</pre>', dom, flags=re.DOTALL).group(1)))
    assert layout["width"] == size[0]
    assert layout["scrollWidth"] <= layout["width"], f"horizontal scroll at {device} width: {layout}"
    assert len(layout["figures"]) == len(report.FIGURES)
    for figure in layout["figures"]:
        assert figure["loaded"] and figure["width"] > 0.5 * min(size[0], 900) and figure["height"] > 50, figure
        assert figure["left"] >= 0 and figure["right"] <= layout["width"], figure
    assert 0 <= layout["answerTop"] < 0.5 * size[1], "the answer is not on the first screen"
    # the screenshot is the first screen: the answer's green box is in it
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    assert pixels.shape[:2] == (window[1], window[0])
    pixels = pixels[:, : size[0]]  # the device's frame
    answer_green = np.all(np.abs(pixels - np.array([0xEE, 0xF6, 0xEE]) / 255) < 0.02, axis=-1).mean()
    assert answer_green > 0.02, f"only {answer_green:.1%} of the first screen is the answer box"
