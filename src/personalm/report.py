"""Experiment reports: PNG figures and one self-contained HTML page beside results.json.

Every experiment writes the same three things into its output folder, so a reader always finds
the numbers (results.json), the pictures (*.png) and a page that puts them together (report.html).
This is the one writer of HTML pages in personalm: studies reach it through
personalm.studies.harness, and the PerCE heatmap page (perce/explain.py) uses it directly.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
code, pre {{ background: #f7f7f7; }}
pre {{ padding: 0.6em; overflow-x: auto; }}
{style}
</style></head><body>
<h1>{title}</h1>
{body}
</body></html>
"""


def figure(ncols: int = 1, width: float = 7.0, height: float = 4.2):
    """(figure, axes) from matplotlib on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height))


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """An HTML table of rows (dicts); floats are shown with 3 decimals."""
    if not rows:
        return "<p>(no rows)</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


def image(path: Path, caption: str = "") -> str:
    """An <img> referencing a PNG in the same folder as the page."""
    text = f"<p>{html.escape(caption)}</p>" if caption else ""
    return f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(caption)}">{text}</figure>'


def section(heading: str, *parts: str) -> str:
    return f"<h2>{html.escape(heading)}</h2>" + "".join(parts)


def interval(results: dict[str, Any], key: str) -> str:
    """`results[key]` and its `<key>_ci` as "mean [low, high]" (3 decimals), as every table shows an estimate."""
    low, high = results[f"{key}_ci"]
    return f"{results[key]:.3f} [{low:.3f}, {high:.3f}]"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Atomic write, so a killed run never leaves a half results file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def write_page(
    path: Path, title: str, parts: Iterable[str], settings: dict[str, Any] | None = None, style: str = ""
) -> Path:
    """The report page; `settings` (seeds, versions, sizes) closes it as a JSON block; `style` adds
    CSS rules for the page's own elements (e.g. PerCE's token heatmaps)."""
    body = "".join(parts)
    if settings:
        body += section("Settings, seeds and versions", f"<pre>{html.escape(json.dumps(settings, indent=2))}</pre>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(PAGE.format(title=html.escape(title), body=body, style=style))
    os.replace(tmp, path)
    return path
