"""The study harness: a tiny fake study writes results.json with provenance, a PNG and report.html,
and a re-run skips the units it already finished."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from personalm import report
from personalm.studies.harness import Study


@dataclass
class Settings:
    out: str
    items: int = 3
    seed: int = 7
    split_seed: int = 1


def fake_study(settings: Settings, computed: list[int]) -> dict:
    """Squares of 0..items-1, one unit each; `computed` records which units really ran."""
    study = Study(settings.out, settings, packages=("personalm", "numpy"))

    def square(i: int) -> dict:
        computed.append(i)
        return {"square": i * i}

    values = [study.unit(f"squares/{i}", lambda i=i: square(i))["square"] for i in range(settings.items)]
    fig, axis = report.figure()
    axis.plot(values)
    png = study.save(fig, "squares.png")
    results = {"squares": values, "seed": settings.seed}
    parts = [report.section("Squares", report.table([{"i": i, "square": v} for i, v in enumerate(values)]),
                            report.image(png, "the squares"))]  # fmt: skip
    return study.finish(results, "Fake study", parts, shown=("seed",))


def test_a_study_writes_results_with_provenance_a_png_and_the_page(tmp_path):
    out = tmp_path / "report"
    results = fake_study(Settings(out=str(out)), [])
    saved = json.loads((out / "results.json").read_text())
    assert saved == results and saved["squares"] == [0, 1, 4]
    record = saved["provenance"]
    assert record["settings"] == {"out": str(out), "items": 3, "seed": 7, "split_seed": 1}
    assert record["seeds"] == {"seed": 7, "split_seed": 1}
    assert record["started"] <= record["ended"] and record["seconds"] >= 0
    assert set(record["load_average_1min"]) == {"start", "end"} and record["command"]
    assert "numpy" in saved["versions"] and saved["machine"]["cpu_count"]
    cpu = open("/proc/cpuinfo", encoding="utf-8").read() if os.path.exists("/proc/cpuinfo") else ""
    assert f"model name\t: {saved['machine']['cpu_model']}\n" in cpu or not cpu
    assert set(saved["machine"]["cpu_features"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_tile"}
    assert (out / "squares.png").read_bytes()[:4] == b"\x89PNG"
    page = (out / "report.html").read_text()
    assert "<h1>Fake study</h1>" in page and 'src="squares.png"' in page and "<td>4</td>" in page
    assert "load_average_1min" in page and "split_seed" in page
    assert (out / ".cache" / ".gitignore").read_text() == "*\n"


def test_a_rerun_skips_finished_units_and_does_the_rest(tmp_path):
    out = tmp_path / "report"
    computed: list[int] = []
    fake_study(Settings(out=str(out), items=2), computed)
    assert computed == [0, 1]
    again: list[int] = []
    results = fake_study(Settings(out=str(out), items=4), again)
    assert again == [2, 3] and results["squares"] == [0, 1, 4, 9]
    assert sorted(p.name for p in (out / ".cache" / "squares").iterdir()) == ["0.json", "1.json", "2.json", "3.json"]


def test_a_benchmark_result_keeps_the_versions_it_measured(tmp_path):
    study = Study(tmp_path, {"rows": 10})
    results = study.finish({"versions": {"numba": "1.0"}}, "Bench", [report.paragraph("ok")])
    assert results["versions"] == {"numba": "1.0"} and results["provenance"]["seeds"] == {}
    assert json.loads((tmp_path / "results.json").read_text())["provenance"]["settings"] == {"rows": 10}
