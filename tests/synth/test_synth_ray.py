"""`personalm synth --engine ray` on a local Ray instance writes the same rows as the local executor."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'personalm[ray]')")

pytestmark = pytest.mark.slow


@pytest.fixture
def ray_session():
    import ray

    yield
    ray.shutdown()


def test_synth_on_ray_matches_local(ray_session, tmp_path, cli):
    personas = tmp_path / "p.jsonl"
    personas.write_text(
        '{"id": "bee", "persona": "A beekeeper in Vermont"}\n{"id": "nurse", "persona": "A night-shift nurse"}\n'
    )
    outputs = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        args = ["synth", "-p", str(personas), "-t", "instruction", "-o", str(out), "--max-tokens", "12"]
        done = cli.invoke(*args, "--engine", engine, "--no-cache")
        assert done.returncode == 0
        outputs[engine] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["persona_id"] for r in outputs["ray"]] == ["bee", "nurse"]
    for local, remote in zip(outputs["local"], outputs["ray"], strict=True):
        assert remote["output"] == local["output"] and remote["model_id"] == local["model_id"]
        assert remote["sampling"] == local["sampling"] and remote["finish_reason"] == local["finish_reason"]


def test_unknown_engine_is_a_clear_error(tmp_path, cli):
    personas = tmp_path / "p.jsonl"
    personas.write_text('{"id": "a", "persona": "A sailor"}\n')
    done = cli.invoke("synth", "-p", str(personas), "-t", "math", "-o", str(tmp_path / "o.jsonl"), "--engine", "spark")
    assert done.returncode == 2
    assert "unknown engine 'spark'" in done.stderr
    assert not (tmp_path / "o.jsonl").exists()
