"""`personalm models list|info`."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from personalm.models.registry import DEFAULT_MODEL, list_models, load_model

app = typer.Typer(help="See which models are available and what they are.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="One JSON object per line.")) -> None:
    """List the embedded default and the local models saved under PERSONALM_HOME."""
    rows = list_models()
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row))
        return
    table = Table("name", "kind", "converted", "source")
    for row in rows:
        table.add_row(row["name"], row["kind"], "yes" if row["converted"] else "on first use", row["source"])
    Console().print(table)


@app.command("info")
def info_cmd(
    model: str = typer.Argument(DEFAULT_MODEL, help="Model name, local directory or openai:MODEL@URL."),
    adapter: str = typer.Option(None, help="A PEFT LoRA adapter directory to apply."),
) -> None:
    """Load a model and print what it is (architecture, size, context, engine) as JSON."""
    with load_model(model, adapter=adapter) as loaded:
        typer.echo(json.dumps(loaded.info(), indent=2))
