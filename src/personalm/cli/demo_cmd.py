"""`personalm demo`: walk the product end to end on the embedded default (each capability adds a step)."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personalm.tables import write_rows

DEMO_PROMPTS = [
    "In two sentences, what should a beginner know about baking bread?",
    "As a retired sailor, describe the sea at night in one sentence.",
    "Give one tip for learning a new language.",
    "Explain what a persona is in one sentence.",
]


def demo(out: Path = typer.Option(Path("demo-output"), help="Folder for the demo's output files.")) -> None:
    """Load the embedded model (twice, to show the cached load), generate, embed, print."""
    from personalm.models.base import SamplingParams
    from personalm.models.embedded import ensure_converted
    from personalm.models.embedder import Embedder
    from personalm.models.local import LocalModel

    console = Console()
    console.rule("[bold]1. the embedded model")
    start = time.perf_counter()
    path = ensure_converted()
    LocalModel(path)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model = LocalModel(path)
    second = time.perf_counter() - start
    console.print(f"first load (converts the GGUF once, then cached): {first:.1f}s")
    console.print(f"second load: [bold]{second:.2f}s[/]  ({model.model_id}, engine {model.info()['engine']})")

    console.rule("[bold]2. generate (batched, greedy)")
    prompts = [[{"role": "user", "content": p}] for p in DEMO_PROMPTS]
    start = time.perf_counter()
    answers = model.generate(prompts, SamplingParams(max_tokens=48))
    seconds = time.perf_counter() - start
    tokens = sum(a.completion_tokens for a in answers)
    for prompt, answer in zip(DEMO_PROMPTS, answers, strict=True):
        console.print(f"[cyan]Q:[/] {prompt}\n[green]A:[/] {answer.text} [dim]({answer.finish_reason})[/]")
    console.print(f"{tokens} tokens in {seconds:.1f}s ({tokens / seconds:.1f} tok/s for {len(prompts)} prompts)")

    console.rule("[bold]3. embed the answers (all-MiniLM-L6-v2)")
    vectors = Embedder().embed([a.text for a in answers])
    similarity = vectors @ vectors.T
    table = Table("", *[f"A{i + 1}" for i in range(len(answers))])
    for i, row in enumerate(similarity):
        table.add_row(f"A{i + 1}", *[f"{v:.2f}" for v in row])
    console.print(f"cosine similarity of the answers ({vectors.shape[1]}-d vectors):")
    console.print(table)
    written = write_rows(
        out / "answers.jsonl",
        [
            {"prompt": p, "output": a.text, "finish_reason": a.finish_reason, "embedding": v.tolist()}
            for p, a, v in zip(DEMO_PROMPTS, answers, vectors, strict=True)
        ],
    )
    console.print(f"wrote {written} rows to {out / 'answers.jsonl'}")

    console.rule("[bold]4. Persona Hub: texts -> personas -> one expansion round -> dedup -> diversity")
    from personalm.personas import demo as personas_demo

    personas_demo.run(model, out, console)
