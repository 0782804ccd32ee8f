"""The one harness every study and benchmark report runs through: settings in, an output folder out.

A study is a function of a settings dataclass. It opens a `Study` on its output folder first thing,
does its work, and closes with `finish`, which writes the same three things for every study:

    out/results.json   the study's numbers, plus `versions`, `machine` and `provenance` (command,
                       settings, seeds, start and end time, load average at both ends), all from
                       personalm.provenance
    out/*.png          the figures, saved with `study.save(fig, "name.png")`
    out/report.html    the page, written by personalm.report (the one HTML writer)

Resuming has one convention. Everything a re-run may reuse lives under `out/.cache/` (which
ignores itself in git): `study.cache("adapters")` gives a folder for checkpoints (a trainer resumes
from what it finds there), and `study.unit(name, compute)` runs one unit of work (one evaluation,
one check) once, keeping its JSON result at `.cache/<name>.json`, so a killed run, run again, skips
every finished unit. A study whose cached work depends on its settings puts it under a folder named
by a hash of them (`study.cache(fingerprint, "runs")`, `study.unit(f"{fingerprint}/eval/base", ...)`),
so a run with other settings never reuses it.

    study = Study(config.out, config, packages=("personalm", "torch"))
    scores = study.unit("eval/base", lambda: evaluate(None))
    fig, axis = report.figure()
    ...
    png = study.save(fig, "scores.png")
    return study.finish(results, "Title", [report.section("Scores", report.image(png))])
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from personalm import report
from personalm.provenance import load_average, machine, run_record, versions

CACHE = ".cache"


class Study:
    """One run of a study: its output folder, its cache, its provenance."""

    def __init__(
        self,
        out: str | Path,
        settings: Any,
        seeds: dict[str, Any] | None = None,
        packages: Sequence[str] = ("personalm",),
    ) -> None:
        """`settings`: a dataclass or dict (recorded as given); `seeds`: every seed the run uses (by
        default the settings' `seed` and `*_seed` fields); `packages`: whose versions the results
        record."""
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.settings = _plain(asdict(settings) if is_dataclass(settings) else dict(settings))
        if seeds is None:
            seeds = {k: v for k, v in self.settings.items() if k == "seed" or k.endswith("_seed")}
        self.seeds = _plain(seeds)
        self.packages = tuple(packages)
        self.started = time.time()
        self.load_at_start = load_average()

    def cache(self, *parts: str) -> Path:
        """The folder `out/.cache/<parts>` (made): checkpoints and finished units live here."""
        root = self.out / CACHE
        folder = root.joinpath(*parts)
        folder.mkdir(parents=True, exist_ok=True)
        if not (root / ".gitignore").is_file():
            (root / ".gitignore").write_text("*\n")
        return folder

    def unit(self, name: str, compute: Callable[[], Any]) -> Any:
        """`compute()` once: its JSON result is kept at .cache/<name>.json and read back on re-runs."""
        path = self.cache() / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        report.write_json(path, result)
        return result

    def save(self, fig, name: str) -> Path:
        """Save a matplotlib figure as out/<name> (a PNG) and close it."""
        return report.save_figure(fig, self.out / name)

    def provenance(self) -> dict[str, Any]:
        return run_record(self.settings, self.seeds, self.started, self.load_at_start)

    def finish(
        self,
        results: dict[str, Any],
        title: str,
        parts: Iterable[str],
        shown: Sequence[str] = (),
        style: str = "",
    ) -> dict[str, Any]:
        """Add provenance to `results`, write results.json and report.html; returns `results`.

        `versions` and `machine` are added unless the study measured its own (a benchmark's result
        carries them for --json); `shown` names further results keys for the page's closing
        settings block; `style` adds CSS for the page's own elements."""
        results.setdefault("versions", versions(*self.packages))
        results.setdefault("machine", machine())
        results["provenance"] = self.provenance()
        report.write_json(self.out / "results.json", results)
        closing = {k: results[k] for k in shown} | {k: results[k] for k in ("provenance", "versions", "machine")}
        report.write_page(self.out / "report.html", title, parts, _plain(closing), style)
        return results


def _plain(value: Any) -> Any:
    """JSON-ready (paths and other objects as strings), so settings always serialize."""
    return json.loads(json.dumps(value, default=str))
