"""`personalm critic score` on a saved (untrained) critic, its bad inputs, and the slow end-to-end
`critic train --quick` then `critic score` on a tiny PrefEval folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from personalm.critic import PreferenceCritic

PREFS = ("-p", "I have a fear of heights.")
QUESTION = ("-q", "What should I do in Paris?")
ANSWERS = ("A boat tour on the Seine.", "Climb the Eiffel Tower.")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("critic") / "critic"
    PreferenceCritic.initial(seed=0).save(folder)
    return folder


def test_score_prints_one_probability_per_answer(cli, saved):
    ran = cli.invoke("critic", "score", *PREFS, *QUESTION, *ANSWERS, "--critic", str(saved))
    assert ran.returncode == 0, str(ran)
    lines = ran.stdout.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == list(ANSWERS)
    assert all(0 <= float(line.split("\t")[0]) <= 1 for line in lines)


def test_score_json_and_jsonl_in_out(cli, saved, tmp_path):
    ran = cli.invoke(
        "critic", "score", *PREFS, "-p", "I dislike boats.", *QUESTION, *ANSWERS, "--critic", str(saved), "--json"
    )
    row = json.loads(ran.stdout.strip().splitlines()[-1])
    assert len(row["scores"]) == 2 and len(row["preferences"]) == 2
    requests = tmp_path / "in.jsonl"
    requests.write_text(
        json.dumps({"preferences": ["I dislike tea."], "question": "Drink?", "answers": ["Tea", "Coffee", "Water"]})
        + "\n"
    )
    ran = cli.invoke(
        "critic", "score", "--input", str(requests), "-o", str(tmp_path / "out.jsonl"), "--critic", str(saved)
    )
    assert ran.returncode == 0, str(ran)
    assert len(json.loads((tmp_path / "out.jsonl").read_text())["scores"]) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("-p", " ", *QUESTION, "a"), "empty preference"),
        ((*QUESTION, "a"), "no preference given"),
        ((*PREFS, "a"), "no question given"),
        ((*PREFS, *QUESTION), "no answers"),
    ],
)
def test_bad_requests_are_one_line(cli, saved, args, message):
    line = cli.one_error_line(cli.invoke("critic", "score", *args, "--critic", str(saved)))
    assert message in line


def test_missing_artifact_and_unknown_layout_are_one_line(cli, tmp_path):
    line = cli.one_error_line(cli.invoke("critic", "score", *PREFS, *QUESTION, "a", "--critic", str(tmp_path / "none")))
    assert "no trained critic" in line
    (tmp_path / "data" / "prefeval" / "other").mkdir(parents=True)
    (tmp_path / "data" / "prefeval" / "mcq_options").mkdir()
    line = cli.one_error_line(cli.invoke("critic", "train", "--data", str(tmp_path / "data"), "--quick"))
    assert "no PrefEval topic files" in line
    line = cli.one_error_line(cli.invoke("critic", "train", "--data", str(tmp_path / "nowhere"), "--quick"))
    assert "no such data folder" in line


@pytest.mark.slow
def test_train_quick_then_score(cli, tmp_path, prefeval_folder):
    data = prefeval_folder(tmp_path / "data")
    critic = tmp_path / "critic"
    results = cli.json(
        "critic", "train", "--quick", "--data", str(data), "-o", str(tmp_path / "report"),
        "--artifact", str(critic), "--json",
    )  # fmt: skip
    topics = results["topics"]
    assert sorted(topics["train"] + topics["validation"] + topics["test"]) == ["food", "games", "pets", "travel"]
    assert results["test_items"] == 2 and 0 <= results["test_accuracy"] <= 1 and len(results["test_accuracy_ci"]) == 2
    assert results["load_seconds"] < 5
    for name in ("results.json", "report.html", "critic.png", "model/meta.json"):
        assert (tmp_path / "report" / name).is_file(), name
    meta = json.loads((critic / "meta.json").read_text())
    assert meta["topics"] == topics and meta["settings"]["combine"] in ("min", "mean", "product", "spread")
    scored = cli.json("critic", "score", *PREFS, *QUESTION, *ANSWERS, "--critic", str(critic), "--json")
    assert len(scored["scores"]) == 2
