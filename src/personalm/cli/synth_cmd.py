"""`personalm synth ...`: persona-driven data synthesis, math verification, diversity experiment."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import typer

from personalm.corpus import read_text
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.progress import progress_bar, stderr
from personalm.tables import output_format, write_rows

app = typer.Typer(help="Persona-driven data synthesis: every Persona Hub task, three prompting modes.")

MODEL_HELP = "Model name, local directory or openai:MODEL@URL (an OpenAI-compatible endpoint)."


def _world(world: str | None) -> str | None:
    """--world is the description itself, or a file holding it."""
    if world and Path(world).is_file():
        return read_text(world)
    return world


def _load_task(task: str, world: str | None, reasoning: str, template: Path | None):
    from personalm.synth.tasks import get_task

    text = read_text(template) if template is not None else None
    if text is not None and not text.strip():
        raise PersonalmError("the template is empty", source=str(template))
    return get_task(task, world=_world(world), kind=reasoning, template=text, template_source=str(template))


@app.callback(invoke_without_command=True)
def synth(
    ctx: typer.Context,
    personas: Path = typer.Option(None, "--personas", "-p", help="Personas: .jsonl/.parquet with a 'persona' column."),
    task: str = typer.Option(
        None, "--task", "-t", help="math, reasoning, instruction, knowledge, npc, tool, preference, dialogue or custom."
    ),
    mode: str = typer.Option("zero-shot", "--mode", help="zero-shot, few-shot or persona-few-shot."),
    out: Path = typer.Option(None, "--out", "-o", help="Output rows (.jsonl or .parquet), written atomically."),
    demos: Path = typer.Option(
        None, "--demos", help="Demonstrations (.jsonl/.parquet, 'text' and optional 'persona') for few-shot modes."
    ),
    constraint: list[str] = typer.Option(
        [], "--constraint", "-c", help="Extra requirement composed with the task, e.g. 'geometry' (repeatable)."
    ),
    world: str = typer.Option(None, help="npc: the game world's description (text or a file)."),
    reasoning: str = typer.Option("logical", help="reasoning: logical or spatial."),
    template: Path = typer.Option(None, help="custom: a Jinja2 template (variables: persona, constraints, world)."),
    turns: int = typer.Option(4, min=2, help="dialogue: messages per conversation."),
    limit: int = typer.Option(None, min=1, help="Use only the first N personas."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    max_tokens: int = typer.Option(256, min=8),
    temperature: float = typer.Option(0.8, min=0.0),
    seed: int = typer.Option(0),
    batch: int = typer.Option(64, min=1, help="Prompts per cached chunk (a killed run redoes at most one)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Generation cache: re-running a killed run resumes."),
    api_key: str = typer.Option(None, envvar="OPENAI_API_KEY"),
    concurrency: int = typer.Option(8, min=1, help="Concurrent requests to an openai: endpoint."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="math: solve each problem k times."),
    k: int = typer.Option(3, min=1, help="math: solutions per problem."),
    min_agree: int = typer.Option(2, min=1, help="math: a problem is kept when this many solutions agree."),
    engine: str = typer.Option(
        "local", help="local (this process) or ray (Ray Data actors; RAY_ADDRESS or a local Ray)."
    ),
) -> None:
    """Synthesize one output per persona for a task; rows carry prompt, output, parsed fields and flags."""
    if ctx.invoked_subcommand is not None:
        return
    from personalm.executors import get_executor
    from personalm.personas.io import read_personas
    from personalm.synth import modes, run
    from personalm.synth.verify import VerifyOptions
    from personalm.synth.verify import verify as verify_rows

    if personas is None or task is None or out is None:
        raise PersonalmError("synth needs --personas FILE, --task TASK and --out FILE")
    output_format(out)
    spec = _load_task(task, world, reasoning, template)
    modes.check_mode(mode)
    if mode != "zero-shot" and demos is None:
        raise PersonalmError(f"mode '{mode}' needs --demos FILE")
    if min_agree > k:
        raise PersonalmError(f"--min-agree {min_agree} is more than --k {k}")
    options = run.SynthOptions(mode, tuple(constraint), max_tokens, temperature, seed=seed, turns=turns)
    demo_rows = modes.read_demos(demos) if demos is not None else []
    rows_in = read_personas(personas).to_pylist()[:limit]
    with get_executor(engine).text_model(model, cache, api_key, concurrency) as loaded:
        if hasattr(loaded, "chunk_size"):
            loaded.chunk_size = batch
        if mode == "persona-few-shot":
            demo_rows = modes.with_personas(demo_rows, loaded)
            for demo in demo_rows:
                stderr.print(f"demo persona{' (inferred)' if demo.inferred else ''}: {demo.persona}", markup=False)
        with progress_bar(f"synth {task}", run.work(len(rows_in), spec, options)) as advance:
            rows = run.synthesize(rows_in, spec, loaded, options, demo_rows, advance)
        if task == "math" and verify:
            solvable = sum(r["valid"] for r in rows)
            with progress_bar(f"verify x{k}", solvable * k) as advance:
                rows = verify_rows(rows, loaded, VerifyOptions(k, min_agree, max_tokens, seed=seed), advance)
    written = write_rows(out, rows)
    result = run.summary(rows) | {"task": task, "mode": mode, "out": str(out)}
    if task == "math" and verify:
        result["math_kept"] = sum(r["verification"]["kept"] for r in rows)
        result["math_agreement"] = dict(sorted(Counter(r["verification"]["agreement"] for r in rows).items()))
    stderr.print(
        f"{written} rows -> {out}; valid {result['valid']} ({result['valid_rate']:.0%}); flags {result['flags']}"
        + (f"; math kept {result['math_kept']} (>= {min_agree} of {k} agree)" if "math_kept" in result else ""),
        markup=False,
    )
    typer.echo(json.dumps(result))


@app.command("diversity")
def diversity(
    personas: Path = typer.Option(
        None, "--personas", "-p", help="Personas (default: personahub/tool_personas.jsonl in the data folder)."
    ),
    data: Path = typer.Option(None, help="Data folder with personahub/ (default: PERSONALM_DATA or ../shared/data)."),
    task: str = typer.Option(
        "math,instruction,knowledge,npc", "--task", "-t", help="The tasks both arms run (zero-shot), comma-separated."
    ),
    n: int = typer.Option(200, "-n", min=3, help="Outputs per arm and task (the first N personas)."),
    out: Path = typer.Option(Path("reports/synthesis"), "--out", "-o", help="Report folder."),
    world: str = typer.Option(
        None, help="npc: the game world's description (text or a file; default: a built-in one)."
    ),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", help=MODEL_HELP),
    max_tokens: int = typer.Option(64, min=8),
    temperature: float = typer.Option(0.8, min=0.01, help="Must be > 0: the plain arm is N samples of one prompt."),
    seed: int = typer.Option(0),
    batch: int = typer.Option(64, min=1, help="Prompts per cached chunk (a killed run redoes at most one)."),
    cache: bool = typer.Option(True, "--cache/--no-cache"),
    embedder: str = typer.Option(None, help="A local sentence-transformers directory (default: all-MiniLM-L6-v2)."),
    quick: bool = typer.Option(False, "--quick", help="A small run for tests: 6 personas, 16 tokens."),
) -> None:
    """With vs without personas per task: mean pairwise cosine and its gap (95% CI), distinct-n, Vendi; output vs
    persona similarity."""
    from personalm.cli.inputs import data_folder
    from personalm.report import interval
    from personalm.studies import synth_diversity as div
    from personalm.synth.tasks import get_task

    names = [t.strip() for t in task.split(",") if t.strip()]
    if not names or len(set(names)) < len(names):
        raise PersonalmError(f"--task {task!r}: expected distinct task names, e.g. math,instruction,knowledge,npc")
    bad = [t for t in names if t in {"dialogue", "custom"}]
    if bad:
        raise PersonalmError(f"diversity runs single-output tasks; '{bad[0]}' is not one")
    world_text = _world(world) if world is not None else div.DEFAULT_WORLD
    tasks = {t: get_task(t, world=world_text) for t in names}
    if personas is None:
        personas = data_folder(data, required=["personahub/tool_personas.jsonl"]) / "personahub" / "tool_personas.jsonl"
    if quick:
        n, max_tokens = min(n, div.QUICK_N), min(max_tokens, div.QUICK_MAX_TOKENS)
    config = div.DiversityConfig(
        out=str(out), personas=str(personas), tasks=tuple(names), n=n, model=model, max_tokens=max_tokens,
        temperature=temperature, seed=seed, batch=batch, cache=cache, embedder=embedder, world=world_text,
    )  # fmt: skip
    result = div.run(config, tasks)
    page = out / "report.html"
    for name in names:
        stderr.print(
            f"{name}: mean pairwise cosine with personas {interval(result, f'mean_pairwise_cosine_personas_{name}')}, "
            f"without {interval(result, f'mean_pairwise_cosine_plain_{name}')}; gap "
            f"{interval(result, f'similarity_gap_{name}')}",
            markup=False,
        )
    stderr.print(f"report -> {page}", markup=False)
    keys = [f"{k}_{t}{s}" for t in names for k in ("similarity_gap", "mean_pairwise_cosine_personas",
                                                   "mean_pairwise_cosine_plain") for s in ("", "_ci")]  # fmt: skip
    typer.echo(json.dumps({"arms": result["arms"], "similarity_by_bin": result["similarity_by_bin"]}
                          | {k: result[k] for k in keys}))  # fmt: skip
