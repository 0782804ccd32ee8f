"""`personalm generate`: prompts from a file or stdin in, generations as JSONL or Parquet out."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from personalm.errors import PersonalmError
from personalm.models.base import Prompt, SamplingParams
from personalm.models.registry import DEFAULT_MODEL, load_model
from personalm.progress import progress_bar
from personalm.tables import Row, input_format, output_format, read_rows, require, write_rows


def read_prompts(
    path: str, column: str | None, fmt: str | None, raw: bool, system: str | None
) -> list[tuple[Any, Prompt]]:
    """(id, prompt) pairs. A row's `messages` list is a chat; a text column becomes a user turn
    (or a plain prompt with raw=True). Every problem names the file and line."""
    fmt = input_format(path, fmt)
    source = "<stdin>" if path == "-" else path
    column = column or ("text" if fmt == "text" else "prompt")
    prompts: list[tuple[Any, Prompt]] = []
    for line, row in read_rows(path, fmt):
        prompt: Prompt
        if "messages" in row and column == "prompt":
            prompt = _messages(row["messages"], source, line)
        else:
            text = require(row, column, str, source, line)
            prompt = text if raw else [{"role": "user", "content": text}]
        if system and not isinstance(prompt, str) and prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system}, *prompt]
        prompts.append((str(row.get("id", line)), prompt))
    if not prompts:
        raise PersonalmError("no prompts found (empty input)", source=source)
    return prompts


def _messages(value: Any, source: str, line: int) -> list[dict[str, str]]:
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    )
    if not ok:
        raise PersonalmError(
            'expected \'messages\' to be a non-empty list of {"role", "content"} objects', source=source, line=line
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def generate(
    input: str = typer.Argument(
        "-", help="Prompts: .txt (one per line), .jsonl/.parquet (prompt or messages column), or - for stdin."
    ),
    out: Path = typer.Option(None, "--out", "-o", help="Output .jsonl or .parquet (default: JSONL on stdout)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help="Model name, local directory or openai:MODEL@URL."),
    adapter: str = typer.Option(None, help="A PEFT LoRA adapter directory on top of a local model."),
    column: str = typer.Option(None, help="Column holding the prompt text (default: prompt, or text for .txt)."),
    fmt: str = typer.Option(
        None, "--format", help="Input format when the extension does not say: jsonl, parquet, text."
    ),
    raw: bool = typer.Option(False, "--raw", help="Send prompts as plain text instead of a user chat turn."),
    system: str = typer.Option(None, help="A system message put before every chat prompt."),
    max_tokens: int = typer.Option(128, min=1, help="Most tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 means greedy decoding."),
    top_p: float = typer.Option(1.0, min=0.0, max=1.0),
    top_k: int = typer.Option(0, min=0),
    seed: int = typer.Option(0, help="Seed of the sampling streams (recorded in every row)."),
    stop: list[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Reuse and store results in the generation cache (makes runs resumable)."
    ),
    api_key: str = typer.Option(None, envvar="OPENAI_API_KEY", help="API key for openai: endpoints."),
    concurrency: int = typer.Option(8, min=1, help="Concurrent requests to an openai: endpoint."),
) -> None:
    """Generate one answer per prompt with the embedded model, a local model or an endpoint."""
    if fmt and fmt not in {"jsonl", "parquet", "text"}:
        raise PersonalmError(f"--format {fmt}: expected jsonl, parquet or text")
    if out is not None:
        output_format(out)
    prompts = read_prompts(input, column, fmt, raw, system)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop)
    )
    with load_model(model, adapter=adapter, cache=cache, api_key=api_key, max_concurrency=concurrency) as loaded:
        with progress_bar("generating", len(prompts)) as advance:
            generations = loaded.generate([p for _, p in prompts], params, advance)
        rows: list[Row] = [
            {
                "id": pid,
                "prompt": prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False),
                "output": g.text,
                "finish_reason": g.finish_reason,
                "prompt_tokens": g.prompt_tokens,
                "completion_tokens": g.completion_tokens,
                "model_id": loaded.model_id,
                "params": json.dumps(params.to_dict()),
            }
            for (pid, prompt), g in zip(prompts, generations, strict=True)
        ]
    if out is None:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        write_rows(out, rows)
        typer.echo(f"wrote {len(rows)} rows to {out}", err=True)
