"""`personalm bench ...`: each benchmark runs ours and a named peer side by side."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personalm.cli.progress import stderr
from personalm.models.registry import DEFAULT_MODEL
from personalm.paths import data_dir

app = typer.Typer(help="Performance benchmarks against the libraries users would use instead.", no_args_is_help=True)


@app.command("generate")
def generate_bench(
    prompts: int = typer.Option(64, min=1, help="Number of synthesis prompts (one batch workload)."),
    max_tokens: int = typer.Option(64, min=1, help="Token budget per prompt, the same for every contender."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local model (llama.cpp always uses the embedded GGUF)."),
    data: Path = typer.Option(
        None, help="Data folder with personahub/tool_personas.jsonl (default: PERSONALM_DATA or ../shared/data)."
    ),
    llamacpp: bool = typer.Option(True, "--llamacpp/--no-llamacpp", help="Also run llama.cpp on the same GGUF."),
    out: Path = typer.Option(None, help="Also write the results JSON here."),
    as_json: bool = typer.Option(False, "--json", help="End with the results as one JSON line."),
) -> None:
    """Ours (continuous batching) vs HF generate one-at-a-time vs llama.cpp, tokens/s and ratios."""
    from personalm.bench import generate

    result = generate.run(
        prompts, max_tokens, data or data_dir(), model, llamacpp, log=lambda m: stderr.print(m, markup=False)
    )
    table = Table("contender", "tokens", "seconds", "tokens/s", "ours is")
    table.add_row(
        "personalm (continuous batching)",
        str(result["ours_tokens"]),
        str(result["ours_s"]),
        str(result["ours_tok_s"]),
        "",
    )
    table.add_row(
        "HF generate, one at a time",
        str(result["peer_tokens"]),
        str(result["peer_s"]),
        str(result["peer_tok_s"]),
        f"{result['speedup']}x",
    )
    if result["llamacpp_tok_s"] is not None:
        table.add_row(
            "llama.cpp (same GGUF), one at a time",
            str(result["llamacpp_tokens"]),
            str(result["llamacpp_s"]),
            str(result["llamacpp_tok_s"]),
            f"{result['llamacpp_speedup']}x",
        )
    console = Console()
    console.print(table)
    console.print(
        f"greedy agreement with one-at-a-time HF: {result['greedy_agreement']:.1%}; "
        f"ours {result['ours_gflops']} GFLOP/s = {result['peak_fraction']:.1%} of the {result['peak_gflops']} GFLOP/s "
        f"fp32 matmul peak measured now (compute bound ≈ {result['compute_bound_tok_s']} tok/s)"
    )
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(result))
