"""A results folder: results.json, the CSV tables, the plans, the figures, summary.md and report.html."""

from __future__ import annotations

from pathlib import Path

from quantsense.io import write_atomic, write_csv, write_json
from quantsense.visualization.html_report import write_html_report
from quantsense.visualization.plots import frontier_plot, sensitivity_bars, sensitivity_heatmap
from quantsense.visualization.schema import migrate
from quantsense.visualization.summary import summary_markdown


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name.replace(" bits/weight", "bits"))


def write_results_folder(out: Path, results: dict) -> list[Path]:
    """results.json, CSV tables, plans, PNG figures, summary.md and report.html in ``out``."""
    results = migrate(results)  # results.json is always written in this version's layout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_json(out / "results.json", results)]
    if "sensitivity" in results:
        sens = results["sensitivity"]
        written.append(write_csv(out / "sensitivity.csv", sens["rows"]))
        written.append(
            write_csv(
                out / "rankings.csv", [{"ranking": key, **r} for key, rows in sens["rankings"].items() for r in rows]
            )
        )
        written.append(sensitivity_bars(results, out / "sensitivity.png"))
        written.append(sensitivity_heatmap(results, out / "heatmap.png"))
    if "proxies" in results:
        written.append(write_csv(out / "proxies.csv", results["proxies"]["rows"]))
        written.append(write_csv(out / "proxy_correlations.csv", results["proxies"]["correlations"]))
    if "frontier" in results:
        fr = results["frontier"]
        written.append(write_csv(out / "frontier.csv", fr["rows"]))
        written.append(frontier_plot(results, out / "frontier.png"))
        for name, plan in fr["plans"].items():
            written.append(write_json(out / "plans" / f"{_slug(name)}.json", plan))
        if len(fr["plans"]) == 1:
            written.append(write_json(out / "plan.json", next(iter(fr["plans"].values()))))
    if "mixed" in results:
        written.append(write_csv(out / "mixed.csv", results["mixed"]["rows"]))
        for name, plan in results["mixed"].get("plans", {}).items():  # each strategy, ready for 'quantsense export'
            written.append(write_json(out / "plans" / f"{_slug(name)}.json", plan))
    if "ablation" in results:
        written.append(write_csv(out / "ablation.csv", [results["ablation"]]))
    written.append(write_atomic(out / "summary.md", summary_markdown(results)))
    written.append(write_html_report(results, out / "report.html"))
    for path in written:
        path.chmod(0o644)
    return written
