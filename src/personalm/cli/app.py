"""Root of the CLI. User errors print as one line on stderr and exit 2, never as a traceback."""

from __future__ import annotations

import sys

import typer

from personalm.cli import (
    avatar_cmd,
    bench_cmd,
    demo_cmd,
    embed_cmd,
    generate_cmd,
    models_cmd,
    perce_cmd,
    personas_cmd,
    serve_cmd,
    soups_cmd,
    synth_cmd,
    tone_cmd,
    train_cmd,
)
from personalm.progress import stderr
from personalm.errors import PersonalmError

app = typer.Typer(
    name="personalm",
    help="Make language models personal: personas, synthesis, tone adapters, PerCE, soups, avatars.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_cmd.app, name="models")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(train_cmd.app, name="train")
app.add_typer(tone_cmd.app, name="tone")
app.add_typer(personas_cmd.app, name="personas")
app.add_typer(avatar_cmd.app, name="avatar")
app.add_typer(synth_cmd.app, name="synth")
app.command("generate")(generate_cmd.generate)
app.command("embed")(embed_cmd.embed)
app.command("demo")(demo_cmd.demo)
app.command("serve")(serve_cmd.serve)
app.add_typer(perce_cmd.app, name="perce")
app.command("explain")(perce_cmd.explain)
app.add_typer(soups_cmd.app, name="soups")

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except PersonalmError as err:
        stderr.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        stderr.print("interrupted; finished work is kept in the cache, re-run to resume", markup=False)
        sys.exit(130)
