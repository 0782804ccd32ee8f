"""`personalm critic train|score`: the preference critic, P(an answer respects stated preferences)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from personalm.errors import PersonalmError
from personalm.progress import stderr, training_bar

app = typer.Typer(
    help="The preference critic: P(an answer respects the user's stated preferences).", no_args_is_help=True
)

CRITIC = typer.Option(None, "--critic", help="Critic artifact folder (default: PERSONALM_HOME/critic).")


@app.command("train")
def train_cmd(
    data: Path = typer.Option(
        None,
        help="Data folder with prefeval/mcq_options/<topic>.json and, for synthetic items, "
        "personahub/tool_personas.jsonl (default: PERSONALM_DATA or ../shared/data).",
    ),
    out: Path = typer.Option(
        Path("reports/critic"), "--out", "-o", help="Folder for results.json, critic.png, report.html and model/."
    ),
    artifact: Path = typer.Option(None, help="Where the chosen critic is installed (default: PERSONALM_HOME/critic)."),
    quick: bool = typer.Option(
        False, "--quick", help="A few items per topic, one epoch, no synthetic items or LM arms."
    ),
    seed: int = typer.Option(0, help="Seed of the topic split, the shuffles and the training."),
    epochs: int = typer.Option(3, min=1, help="Epochs of each cross-encoder arm (the best one is kept)."),
    lr: list[float] = typer.Option([2e-5], "--lr", help="Learning rate(s) of the cross-encoder arms (repeatable)."),
    synthetic: int = typer.Option(96, min=0, help="Personas that each write one synthetic item (0: none)."),
    lm_steps: int = typer.Option(16, min=0, help="LoRA steps of the LM design (0: skip it)."),
    lm_floors: bool = typer.Option(True, "--lm-floors/--no-lm-floors", help="Also score the zero-shot LM floors."),
    as_json: bool = typer.Option(False, "--json", help="End with the results as one JSON line."),
) -> None:
    """Train the critic on PrefEval's train topics, choose on validation topics, report on test topics."""
    from personalm.cli.inputs import PERSONAS_FILE, data_folder
    from personalm.critic.data import prefeval_items
    from personalm.studies.critic import CriticStudyConfig, run

    if not lr or any(value <= 0 for value in lr):
        raise PersonalmError(f"--lr {' '.join(map(str, lr))}: each learning rate must be positive")
    wants_personas = synthetic > 0 and not quick
    folder = data_folder(data, required=["prefeval/mcq_options", *([PERSONAS_FILE] if wants_personas else [])])
    prefeval_items(folder)
    config = CriticStudyConfig(
        data=str(folder), out=str(out), artifact=str(artifact) if artifact else None, seed=seed, quick=quick,
        epochs=epochs, lrs=tuple(lr), synthetic=synthetic, lm_steps=lm_steps, lm_floors=lm_floors,
    )  # fmt: skip
    with training_bar("critic") as progress:
        results = run(config, log=lambda m: stderr.print(m, markup=False), progress=progress)
    table = Table("design", "validation accuracy", "95% CI", "n")
    for name, design in results["designs"].items():
        v = design["validation"]
        table.add_row(
            name + (" (chosen)" if name == results["chosen"] else ""), f"{v['accuracy']:.3f}", str(v["ci"]), str(v["n"])
        )
    console = Console()
    console.print(table)
    console.print(
        f"test topics {', '.join(results['topics']['test'])}: accuracy {results['test_accuracy']:.3f} "
        f"(95% CI {results['test_accuracy_ci']}, {results['test_items']} items, chance 0.25); "
        f"combination rule {results['combine']['chosen']}; artifact {results['artifact']} loads in {results['load_seconds']} s"
    )
    if as_json:
        typer.echo(json.dumps(results))


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def check_request(
    preferences: list[str], question: str | None, answers: list[str], source: str | None = None, line: int | None = None
) -> None:
    """One scoring request: at least one preference, none empty, a question, at least one answer."""
    where = {"source": source, "line": line}
    if not preferences:
        raise PersonalmError("no preference given (--preference TEXT, repeatable)", **where)
    if not all(_text(p) for p in preferences):
        raise PersonalmError("empty preference: each preference needs text", **where)
    if not _text(question):
        raise PersonalmError("no question given (--question TEXT)", **where)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise PersonalmError("no answers to score (give ANSWER... or an 'answers' list)", **where)


def read_requests(path: Path) -> list[dict[str, Any]]:
    """JSONL rows with 'preferences' (list of strings), 'question' and 'answers' (list of strings)."""
    from personalm.tables import read_rows, require

    rows = []
    for line, row in read_rows(path):
        preferences = require(row, "preferences", list, str(path), line)
        answers = require(row, "answers", list, str(path), line)
        check_request(preferences, row.get("question"), answers, str(path), line)
        rows.append(row)
    if not rows:
        raise PersonalmError("no requests (empty file)", source=str(path))
    return rows


@app.command("score")
def score_cmd(
    answers: list[str] = typer.Argument(None, help="Candidate answers to score."),
    preference: list[str] = typer.Option([], "--preference", "-p", help="A stated preference (repeatable)."),
    question: str = typer.Option(None, "--question", "-q", help="What the user asked."),
    input_file: Path = typer.Option(
        None, "--input", "-i", help="JSONL requests: 'preferences' (list), 'question', 'answers' (list)."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="With --input: write the scored rows here (default stdout)."),
    critic_dir: Path = CRITIC,
    as_json: bool = typer.Option(False, "--json", help="Print the scores as one JSON object."),
) -> None:
    """P(each answer respects all the stated preferences), from the trained critic."""
    from personalm.critic.model import default_critic_dir, timed_load
    from personalm.tables import write_rows

    if input_file is not None:
        if answers or preference or question:
            raise PersonalmError("give either --input FILE or --preference/--question/ANSWER..., not both")
        requests = read_requests(input_file)
    else:
        check_request(list(preference), question, list(answers or []))
        requests = [{"preferences": list(preference), "question": question, "answers": list(answers)}]
    critic, seconds = timed_load(critic_dir or default_critic_dir())
    stderr.print(f"critic loaded in {seconds * 1000:.0f} ms", markup=False)
    scored = [
        row
        | {"scores": [round(float(s), 4) for s in critic.score(row["preferences"], row["question"], row["answers"])]}
        for row in requests
    ]
    if input_file is not None:
        if out:
            write_rows(out, scored)
        else:
            for row in scored:
                typer.echo(json.dumps(row, ensure_ascii=False))
        return
    row = scored[0]
    if as_json:
        typer.echo(json.dumps(row, ensure_ascii=False))
        return
    for answer, score in zip(row["answers"], row["scores"], strict=True):
        typer.echo(f"{score:.4f}\t{answer}")
