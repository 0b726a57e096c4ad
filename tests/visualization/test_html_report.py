"""report.html from synthetic results of each kind, opened in headless Chromium with the network cut off.

Chromium and chromedriver come from Debian (apt-get install chromium chromium-driver); selenium drives them through
/usr/bin/chromedriver, so nothing is downloaded. Screenshots go to tmp_path and, when set, $QUANTSENSE_SCREENSHOTS.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from quantsense.errors import QuantsenseError
from quantsense.visualization.html_report import glossary, rebuild_report, render_html, ship_advice, write_html_report
from quantsense.visualization.plots import TaskInfo, num, plan_label
from quantsense.visualization.report_figures import frontier_fig
from tests.visualization import fixtures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

REPORTS = {  # fixture -> (plot divs expected, a sortable table and the column to sort by)
    "classification_run": (
        ["fig-bars-only", "fig-bars-all_but", "fig-heatmap", "fig-frontier"],
        "sensitivity-table",
        "KL mean",
    ),
    "classification_linear": (["fig-bars-only", "fig-heatmap"], "sensitivity-table", "KL mean"),
    "classification_frontier": (["fig-bars-only", "fig-heatmap", "fig-frontier"], "frontier-table", "model MB"),
    "llm_frontier": (["fig-bars-only", "fig-heatmap", "fig-frontier"], "frontier-table", "dNLL"),
    "export_only": ([], "export-table", "field"),
}


class _Sources(HTMLParser):
    """Every src/href of script, link, img and iframe elements."""

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "img", "iframe"):
            self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def _browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--window-size=1440,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": 0, "uploadThroughput": 0},
    )
    return driver


@pytest.fixture(scope="module")
def browser():
    driver = _browser()
    yield driver
    driver.quit()


def _column(driver, table_id: str, header: str) -> list[str]:
    return driver.execute_script(
        "var t = document.getElementById(arguments[0]);"
        "var i = Array.prototype.map.call(t.tHead.rows[0].cells, function (c) { return c.textContent.replace(/ [▲▼]$/, ''); }).indexOf(arguments[1]);"
        "return Array.prototype.map.call(t.tBodies[0].rows, function (r) {"
        "  var c = r.cells[i]; return c.hasAttribute('data-v') ? c.getAttribute('data-v') : c.textContent; });",
        table_id,
        header,
    )


def _click_header(driver, table_id: str, header: str) -> None:
    from selenium.webdriver.common.by import By

    for th in driver.find_elements(By.CSS_SELECTOR, f"#{table_id} thead th"):
        if th.text.rstrip(" ▲▼") == header:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", th)
            th.click()
            return
    raise AssertionError(f"no header {header!r} in #{table_id}")


def _sort_key(value: str):
    try:
        return (0, float(value))
    except ValueError:
        return (0, value) if value else (1, 0.0)


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, min(int(height) + 40, 16000))
    driver.execute_script("window.scrollTo(0, 0)")
    out = tmp_path / f"{name}.png"
    driver.save_screenshot(str(out))
    if os.environ.get("QUANTSENSE_SCREENSHOTS"):
        target = Path(os.environ["QUANTSENSE_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target / out.name)
    driver.set_window_size(1440, 1000)
    return out


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_report_opens_offline_plots_sort_and_screenshot(browser, name, tmp_path):
    divs, table_id, header = REPORTS[name]
    results = getattr(fixtures, name)()
    page = write_html_report(results, tmp_path / "report.html", tolerance=0.5)
    text = page.read_text()
    parser = _Sources()
    parser.feed(text)
    assert [u for u in parser.urls if re.match(r"(?i)^(https?:)?//", u)] == []
    assert 1_000_000 < len(text) < 8_000_000

    browser.get_log("browser")
    browser.get_log("performance")
    browser.get(page.as_uri())
    browser.execute_script("return document.readyState")
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []
    requested = [
        json.loads(e["message"])["message"]["params"].get("request", {}).get("url", "")
        for e in browser.get_log("performance")
        if json.loads(e["message"])["message"]["method"] == "Network.requestWillBeSent"
    ]
    assert requested and all(u.startswith(("file:", "data:", "blob:")) for u in requested), requested

    traces = browser.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('.js-plotly-plot'),"
        " function (d) { return [d.id, d.data.length, d.querySelectorAll('.main-svg').length]; });"
    )
    assert sorted(t[0] for t in traces) == sorted(divs)
    assert all(n_traces > 0 and svgs > 0 for _, n_traces, svgs in traces)

    before = _column(browser, table_id, header)
    _click_header(browser, table_id, header)
    ascending = _column(browser, table_id, header)
    _click_header(browser, table_id, header)
    descending = _column(browser, table_id, header)
    assert sorted(before, key=_sort_key) == ascending
    present = [v for v in ascending if v]
    assert [v for v in descending if v] == present[::-1]
    assert len(before) == len(ascending) >= 2

    shot = _screenshot(browser, name, tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_frontier_labels_do_not_overlap_in_the_browser(browser, tmp_path):
    page = write_html_report(fixtures.llm_frontier(), tmp_path / "report.html")
    browser.get(page.as_uri())
    boxes = browser.execute_script(
        "return Array.prototype.map.call(document.querySelectorAll('#fig-frontier .annotation-text-g text'),"
        " function (t) { var r = t.getBoundingClientRect(); return [t.textContent, r.left, r.top, r.right, r.bottom]; });"
    )
    labels = [b for b in boxes if b[0] != "FP32"]
    assert len(labels) == 13
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            overlap_w = min(a[3], b[3]) - max(a[1], b[1])
            overlap_h = min(a[4], b[4]) - max(a[2], b[2])
            assert overlap_w <= 0 or overlap_h <= 0, (a, b)


def test_report_is_self_contained_and_escaped(tmp_path):
    results = fixtures.classification_run()
    results["provenance"]["command"] = "quantsense run --out '<script>alert(1)</script>'"
    text = render_html(results)
    assert "<script>alert(1)</script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert text.count("<script") == 3  # Plotly, the figures' JSON, the page's own code
    assert "cdn.plot.ly/plotly" not in text.split("<script>", 1)[0]


def _loss(results, row):
    task = TaskInfo.from_results(results)
    return num(row[task.loss]), num(row[task.ci_low]), num(row[task.ci_high])


def test_ship_advice_names_the_smallest_plan_whose_interval_includes_zero():
    results = fixtures.classification_frontier()
    rows = results["frontier"]["rows"]
    clear = [r for r in rows if _loss(results, r)[1] <= 0 <= _loss(results, r)[2]]
    best = min(clear, key=lambda r: r["model_mb"])
    assert best["plan"] == "allocated@4.5 bits/weight"
    first, within = ship_advice(results, tolerance=0.5)
    assert first.startswith("Smallest plan whose accuracy drop is indistinguishable from zero")
    assert f": {best['plan']} — " in first and "13 measured" in first
    tolerable = min((r for r in rows if _loss(results, r)[2] <= 0.5), key=lambda r: r["model_mb"])
    assert f": {tolerable['plan']} — " in within


def test_ship_advice_says_so_when_no_plan_is_indistinguishable():
    results = fixtures.llm_frontier()
    task = TaskInfo.from_results(results)
    results["frontier"]["rows"] = [r for r in results["frontier"]["rows"] if num(r[task.ci_low]) > 0]
    assert len(results["frontier"]["rows"]) == 11
    first, within = ship_advice(results, tolerance=0.001)
    assert first.startswith("No plan is indistinguishable from FP32") and "all 11 measured plans" in first
    lowest = min(results["frontier"]["rows"], key=lambda r: r["delta_nll"])
    assert f"The lowest loss is {lowest['plan']} — " in first
    assert within.startswith("No plan's upper 95% bound")
    assert ship_advice(fixtures.export_only()) == [
        "This folder has no measured plans (no frontier or mixed-precision rows with a loss interval), "
        "so there is no plan to recommend."
    ]


def test_every_number_in_the_ship_sentence_is_the_plans(tmp_path):
    results = fixtures.llm_frontier()
    sentence = ship_advice(results)[0]
    plan = next(r for r in results["frontier"]["rows"] if f": {r['plan']} — " in sentence)
    assert f"{plan['model_mb']:.0f} MB" in sentence
    assert math.isclose(float(re.search(r"— ([\d.]+) bits/weight", sentence).group(1)), plan["avg_bits"], rel_tol=5e-3)


def test_rebuild_report_reads_the_folder(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(fixtures.llm_blocks()))
    out = rebuild_report(tmp_path)
    assert out == tmp_path / "report.html" and "SmolLM2-135M" in out.read_text()[-400_000:]


def test_rebuild_report_errors_name_the_problem(tmp_path):
    with pytest.raises(QuantsenseError, match="no results.json in"):
        rebuild_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(QuantsenseError, match="is not valid JSON"):
        rebuild_report(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"baseline": {}}))
    with pytest.raises(QuantsenseError, match=r"is not a quantsense results file \(no provenance, workspace\)"):
        rebuild_report(tmp_path)


def test_plotting_libraries_are_imported_only_when_drawing():
    import subprocess
    import sys

    code = (
        "import sys, quantsense.visualization.html_report, quantsense.visualization.plots; "
        "print(sorted(m for m in ('plotly', 'matplotlib', 'selenium') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _frontier_labels(results) -> list[str]:
    layout = frontier_fig(results, TaskInfo.from_results(results))["layout"]
    return [a["text"] for a in layout["annotations"] if a["text"] != "FP32"]


def test_plan_labels_come_from_kind_format_and_budget_not_the_plan_name():
    assert plan_label({"plan": "uniform anything", "kind": "uniform", "format": "q8_0", "budget": None}) == "q8_0"
    assert (
        plan_label({"plan": "allocated whatever", "kind": "allocated", "format": None, "budget": {"avg_bits": 4.5}})
        == "@4.5"
    )
    assert (
        plan_label({"plan": "allocated@x", "kind": "allocated", "format": None, "budget": {"max_bytes": 20_000_000}})
        == "@20.00MB"
    )
    assert plan_label({"plan": "first_last q8_0", "kind": "hand", "format": None, "budget": None}) == "first_last q8_0"
    assert plan_label({"plan": "uniform q4_0", "kind": "uniform", "format": None, "budget": None}) == "uniform q4_0"

    results = fixtures.llm_frontier()
    uniform = next(r for r in results["frontier"]["rows"] if r["format"] == "q8_0")
    uniform["plan"] = "uniform anything"
    allocated = next(r for r in results["frontier"]["rows"] if r["kind"] == "allocated")
    allocated["plan"], allocated["budget"] = "allocated plan one", {"max_bytes": 123_450_000}
    labels = _frontier_labels(results)
    assert "q8_0" in labels and "@123.45MB" in labels
    assert not any("anything" in t or "plan one" in t for t in labels)
    series = [t["name"] for t in frontier_fig(results, TaskInfo.from_results(results))["data"]]
    assert "uniform q8_0" in series and "uniform anything" not in series


def test_glossary_has_one_line_per_format_family_from_the_table():
    results = fixtures.llm_frontier()  # six GGUF formats, one family
    terms = [t for t, _ in glossary(results)]
    assert terms.count(fixtures.GGUF_GLOSSARY[0]) == 1 and fixtures.INT_GLOSSARY[0] not in terms
    results["formats"]["zz9"] = {
        **fixtures.format_entry("q4_0"),
        "name": "zz9",
        "family": "zz",
        "glossary": ["zz formats", "a family named like nothing known"],
    }
    assert dict(glossary(results))["zz formats"] == "a family named like nothing known"
    del results["formats"]  # older results: no format lines at all, whatever the names
    terms = [t for t, _ in glossary(results)]
    assert fixtures.GGUF_GLOSSARY[0] not in terms and "zz formats" not in terms
    both = fixtures.classification_run()
    both["formats"].update(fixtures.format_table("q4_0"))
    terms = [t for t, _ in glossary(both)]
    assert terms.count(fixtures.INT_GLOSSARY[0]) == 1 and terms.count(fixtures.GGUF_GLOSSARY[0]) == 1


def test_headline_reads_the_baseline_sentence_head_and_data_description():
    results = fixtures.llm_frontier()
    results["baseline"]["summary"] = "FP32 perplexity: 20.470 (a sentence only the producer writes)"
    results["workspace"]["data"]["description"] = "seven windows of text"
    results["workspace"]["model"]["head"] = "a very particular head"
    text = render_html(results)
    assert "<p class=lede>FP32 perplexity: 20.470 (a sentence only the producer writes)</p>" in text
    assert "seven windows of text" in text and "a very particular head" in text
    assert "4095 scored tokens" not in text.split("<main>", 1)[1].split("</header>", 1)[0]


def test_a_task_this_process_has_not_registered_still_renders():
    results = fixtures.classification_frontier()
    task = results["workspace"]["task"]
    task["name"] = results["workspace"]["data"]["task"] = "made_up_task"
    task["report_columns"] = [["my score", "a column only this task has", "accuracy"], ["my CI", "its CI", "loss_ci"]]
    text = render_html(results)
    assert '<th scope=col title="a column only this task has">my score</th>' in text
    assert "made_up_task" in text


def test_formats_column_counts_units_from_the_row():
    results = fixtures.classification_run()
    results["mixed"]["rows"][2]["formats"] = {"zz9": 30, "int8": 6}
    text = render_html(results)
    assert "zz9 ×30, int8 ×6" in text and "int8 ×36" in text
