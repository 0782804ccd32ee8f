"""The soups study: win rates with intervals over prompts, the two judges' agreement, the LLM judge over
HTTP (a loopback endpoint; a real llama.cpp server end to end), held-out prompts, and a quick run."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from personalm.eval.judges import LLMJudge, agreement, scores_chats
from personalm.models.openai_compat import OpenAICompatModel, list_server_models
from personalm.paths import data_dir
from personalm.soups.preferences import Preferences, combination_name
from personalm.soups.prompts import HELD_OUT, load_prompts, split_prompts
from personalm.studies.soups import ExperimentConfig, flat_verdicts, held_out_questions, win_rates

PREFS = Preferences.default()
POLES = [p.key for p in PREFS.poles]


def test_win_rates_carry_intervals_over_prompts_and_the_prompt_count():
    combos = PREFS.combinations()[:2]
    first, second = (combination_name(c) for c in combos)
    verdicts = {
        "prompted": {
            first: {p.key: np.array([1.0, 1.0, 0.5, 0.0]) for p in combos[0]},
            second: {p.key: np.array([1.0, 1.0, 1.0, 1.0]) for p in combos[1]},
        },
        "pmorl": {
            first: {p.key: np.array([0.0, 0.5, 0.5, 0.0]) for p in combos[0]},
            second: {p.key: np.array([0.5, 0.5, 0.5, 0.5]) for p in combos[1]},
        },
    }
    rows, headline = win_rates(verdicts, combos)
    assert [r["combination"] for r in rows] == [first, second]
    assert rows[0]["vs_prompted"] == pytest.approx(0.625) and rows[1]["vs_prompted_ci"] == [1.0, 1.0]
    assert rows[0][f"vs_pmorl:{combos[0][0].dimension}"] == pytest.approx(0.25)
    assert headline["soup_vs_prompted_winrate"] == pytest.approx((0.625 + 1.0) / 2)
    assert headline["soup_vs_pmorl_winrate"] == pytest.approx((0.25 + 0.5) / 2)
    for rival in ("prompted", "pmorl"):
        key = f"soup_vs_{rival}_winrate"
        low, high = headline[f"{key}_ci"]
        assert low <= headline[key] <= high and headline[f"{key}_items"] == 4
        for row in rows:
            assert row[f"vs_{rival}_ci"][0] <= row[f"vs_{rival}"] <= row[f"vs_{rival}_ci"][1]
    assert len(flat_verdicts(verdicts["prompted"])) == 2 * 3 * 4


def test_agreement_share_and_kappa_on_a_known_case():
    # both decided on the first four pairs: 3 of 4 agree; win rates 1/2 and 1/4 give chance 1/2, kappa 1/2
    found = agreement([1.0, 1.0, 0.0, 0.0, 0.5, 1.0], [0.9, 0.2, 0.0, 0.3, 1.0, 0.5])
    assert found == {"pairs": 6, "decided_by_both": 4, "agreement": 0.75, "kappa": pytest.approx(0.5)}
    assert agreement([1.0, 1.0], [0.8, 0.7])["kappa"] is None  # one winner throughout: chance agreement is 1
    assert agreement([0.5], [1.0])["agreement"] is None
    with pytest.raises(ValueError, match="different pairs"):
        agreement([1.0], [1.0, 0.0])


class LongerAnswerEndpoint:
    """A loopback OpenAI-compatible chat endpoint that answers like a judge preferring the longer response."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                a, b = re.search(r"\[Response A\]\n(.*)\n\n\[Response B\]\n(.*)\n\n", body["messages"][-1]["content"],
                                 re.S).groups()  # fmt: skip
                answer = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "Either"
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer},
                                                "finish_reason": "stop"}]}).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def endpoint() -> Iterator[LongerAnswerEndpoint]:
    server = LongerAnswerEndpoint()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_llm_judge_answers_over_http_in_both_orders(endpoint):
    with OpenAICompatModel(endpoint.url, "judge") as model:
        assert not scores_chats(model)
        verdicts = LLMJudge(model).prefer(PREFS.poles[0], ["q1", "q2", "q3"], ["a long answer", "x", "same"],
                                          ["short", "a longer one", "same"])  # fmt: skip
    assert verdicts.tolist() == [1.0, 0.0, 0.5]
    assert len(endpoint.requests) == 6 and all(r["temperature"] == 0.0 for r in endpoint.requests)


def test_held_out_prompts_default_to_the_built_in_tail_of_fifty(tmp_path):
    train, held = split_prompts(load_prompts(), HELD_OUT)
    config = ExperimentConfig(adapters="a", out=str(tmp_path))
    assert held_out_questions(config) == held and len(held) == 50 and len(train) == 70
    assert not set(train) & set(held)
    folder = data_dir()
    if (folder / "prefeval" / "mcq_options").is_dir():
        config = ExperimentConfig(adapters="a", out=str(tmp_path), data=str(folder))
        questions = held_out_questions(config)
        assert len(questions) == 50 and len(set(questions)) == 50 and not set(questions) & set(load_prompts())
        assert held_out_questions(config) == questions


def _quick_run(cli, tmp_path: Path, embedded_model, soups_folder, prompts: int, *extra: str) -> dict:
    adapters = soups_folder(embedded_model.model, tmp_path / "adapters", POLES)
    out = tmp_path / "report"
    done = cli.run("soups", "experiment", "--adapters", str(adapters), "-o", str(out), "--quick",
                   "--limit", str(prompts), *extra, timeout=1800)  # fmt: skip
    assert done.returncode == 0, str(done)
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    saved = json.loads((out / "results.json").read_text())
    assert printed["soup_vs_prompted_winrate"] == saved["soup_vs_prompted_winrate"]
    assert saved["held_out_prompts"] == prompts and len(saved["per_combination"]) == 8
    for rival in ("prompted", "pmorl"):
        low, high = saved[f"soup_vs_{rival}_winrate_ci"]
        assert low <= saved[f"soup_vs_{rival}_winrate"] <= high and saved[f"soup_vs_{rival}_winrate_items"] == prompts
    assert all(f"{k}_ci" in p for p in saved["pareto"] for k in p if k != "lambda" and not k.endswith("_ci"))
    assert saved["provenance"]["seconds"] > 0 and (out / "winrates.png").is_file()
    return saved


@pytest.mark.slow
def test_quick_run_on_random_adapters(cli, tmp_path, embedded_model, soups_folder):
    saved = _quick_run(cli, tmp_path, embedded_model, soups_folder, 3)
    assert "judge_agreement" not in saved and saved["judge"] == "programmatic"


@pytest.mark.slow
@pytest.mark.llamacpp
def test_quick_run_with_an_llm_judge_on_a_real_server(cli, tmp_path, embedded_model, soups_folder, llamacpp_server):
    [name] = list_server_models(llamacpp_server)
    # one prompt: 8 combinations x 3 poles x 2 rivals x 2 orders = 96 chat requests to the server
    saved = _quick_run(cli, tmp_path, embedded_model, soups_folder, 1, "--judge", f"openai:{name}@{llamacpp_server}")
    for rival in ("prompted", "pmorl"):
        low, high = saved[f"soup_vs_{rival}_winrate_llm_ci"]
        assert low <= saved[f"soup_vs_{rival}_winrate_llm"] <= high
        agreed = saved["judge_agreement"][rival]
        assert agreed["pairs"] == 8 * 3 and 0 <= agreed["decided_by_both"] <= agreed["pairs"]
    assert len(saved["per_combination_llm"]) == 8 and "LLM judge" in (tmp_path / "report" / "report.html").read_text()
