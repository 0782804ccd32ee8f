"""Root of the CLI. User errors print as one line on stderr and exit 2, never as a traceback."""

from __future__ import annotations

import os
import sys

import typer

from personalm.cli import (
    avatar_cmd,
    bench_cmd,
    critic_cmd,
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
from personalm.devices import DEVICE_ENV, resolve_device
from personalm.errors import PersonalmError
from personalm.progress import stderr

try:  # typer >= 0.2x raises its own copy of click's exceptions; older releases raise click's
    from typer import TyperException as ClickError
except ImportError:
    from click import ClickException as ClickError

app = typer.Typer(
    name="personalm",
    help="Make language models personal: personas, synthesis, tone adapters, PerCE, soups, avatars, critic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    device: str = typer.Option(
        None,
        "--device",
        help="Where every model of this command runs: auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps "
        f"(default: ${DEVICE_ENV}, else auto).",
    ),
) -> None:
    if device is not None:
        os.environ[DEVICE_ENV] = str(resolve_device(device))  # a device named but absent fails here, in one line


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
app.add_typer(critic_cmd.app, name="critic")

EXIT_USER_ERROR = 2


def main(argv: list[str] | None = None) -> None:
    try:
        code = app(args=argv, prog_name="personalm", standalone_mode=False)
    except PersonalmError as err:
        _fail(str(err))
    except ClickError as err:
        if type(err).__name__ == "NoArgsIsHelpError":
            sys.exit(EXIT_USER_ERROR)  # typer has already printed the help
        _fail(_click_line(err), err.exit_code)
    except typer.Abort:
        stderr.print("aborted", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        stderr.print("interrupted; finished work is kept in the cache, re-run to resume", markup=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)  # as typer's standalone mode does: callers see SystemExit


def _click_line(err: ClickError) -> str:
    """A usage error (bad option value, missing argument, unknown command) on one line, naming the command."""
    ctx = getattr(err, "ctx", None)
    message = " ".join(err.format_message().split())
    if ctx is None:
        return message
    return f"{ctx.command_path}: {message} (see {ctx.command_path} --help)"


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    stderr.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)
