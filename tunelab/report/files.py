"""The ladder's report files: report.json (everything measured), report.md and the self-contained report.html."""

from __future__ import annotations

from pathlib import Path

from tunelab.atomic import write_json, write_text
from tunelab.report.ladder import markdown


def write_reports(report: dict, out_dir: Path) -> None:
    """report.json, report.md and report.html in `out_dir`, each written atomically."""
    from tunelab.report.html import html_page  # plotly loads only when a report is written

    write_json(out_dir / "report.json", report)
    write_text(out_dir / "report.md", markdown(report))
    write_text(out_dir / "report.html", html_page(report))
