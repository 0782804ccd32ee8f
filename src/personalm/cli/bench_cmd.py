"""`personalm bench ...`: each benchmark runs ours and a named peer side by side."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from personalm.cli.inputs import PERSONAS_FILE, data_folder
from personalm.errors import PersonalmError
from personalm.models.registry import DEFAULT_MODEL
from personalm.progress import stderr

app = typer.Typer(help="Performance benchmarks against the libraries users would use instead.", no_args_is_help=True)

OUT = typer.Option(None, help="Also write the results JSON here.")
AS_JSON = typer.Option(False, "--json", help="End with the results as one JSON line.")
PROFILE = typer.Option(False, "--profile", help="Also profile our run by kind of work (torch.profiler).")
PERSONAS_DATA = typer.Option(
    None, help="Data folder with personahub/tool_personas.jsonl (default: PERSONALM_DATA or ../shared/data)."
)


@app.command("generate")
def generate_bench(
    prompts: int = typer.Option(64, min=1, help="Number of synthesis prompts (one batch workload)."),
    max_tokens: int = typer.Option(64, min=1, help="Token budget per prompt, the same for every contender."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local model (llama.cpp always uses the embedded GGUF)."),
    data: Path = PERSONAS_DATA,
    llamacpp: bool = typer.Option(True, "--llamacpp/--no-llamacpp", help="Also run llama.cpp on the same GGUF."),
    server_slots: list[int] = typer.Option(
        [8, 16], "--server-slots", min=1, help="Parallel slots of each llama-server run (repeat the option)."
    ),
    profile: bool = PROFILE,
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Ours (continuous batching) vs HF generate one-at-a-time vs llama.cpp alone and as a server with
    parallel slots, tokens/s and ratios."""
    from personalm.studies.bench import generate

    folder = data_folder(data, optional=[PERSONAS_FILE], fallback=True)
    result = generate.run(
        prompts, max_tokens, folder, model, llamacpp, tuple(server_slots), profile,
        log=lambda m: stderr.print(m, markup=False),
    )  # fmt: skip
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
    for run in result["llamacpp_server"]:
        table.add_row(
            f"llama-server (same GGUF), {run['slots']} parallel slots",
            str(run["tokens"]),
            str(run["s"]),
            str(run["tok_s"]),
            f"{round(result['ours_tok_s'] / run['tok_s'], 2)}x",
        )
    console = Console()
    console.print(table)
    console.print(
        f"greedy agreement with one-at-a-time HF: {result['greedy_agreement']:.1%}; "
        f"ours {result['ours_gflops']} GFLOP/s = {result['peak_fraction']:.1%} of the {result['peak_gflops']} GFLOP/s "
        f"fp32 matmul peak measured now (compute bound ≈ {result['compute_bound_tok_s']} tok/s)"
    )
    _print_profile(result["profile"])
    _finish(result, out, as_json)


def _print_profile(profile: dict | None) -> None:
    if not profile:
        return
    table = Table("kind of work", "share of profiled time")
    for kind, share in profile["shares"].items():
        table.add_row(kind, f"{share:.1%}")
    console = Console()
    console.print(table)
    if "matmul_gflops" in profile:
        console.print(f"matmuls ran at {profile['matmul_gflops']} GFLOP/s while they ran")


@app.command("serve")
def serve_bench(
    clients: int = typer.Option(32, min=1, help="Concurrent streaming clients."),
    seconds: float = typer.Option(60.0, min=1, help="Length of the concurrent phase."),
    sequential_seconds: float = typer.Option(30.0, min=1, help="Length of the one-at-a-time phase."),
    max_tokens: int = typer.Option(64, min=1, help="Token budget per request."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local model to serve."),
    data: Path = PERSONAS_DATA,
    peer: bool = typer.Option(
        True, "--peer/--no-peer", help="Also run the concurrent load against llama-server (same GGUF)."
    ),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Streaming clients on loopback against `personalm serve` vs the same requests one at a time,
    and the same concurrent load against llama.cpp's llama-server."""
    from personalm.studies.bench import serve

    folder = data_folder(data, optional=[PERSONAS_FILE], fallback=True)
    result = serve.run(
        clients, seconds, sequential_seconds, max_tokens, folder, model, peer=peer,
        log=lambda m: stderr.print(m, markup=False),
    )  # fmt: skip
    table = Table("phase", "requests", "tokens", "seconds", "tokens/s", "TTFT p50 ms", "TTFT p95 ms", "errors")
    phases = [("concurrent", result["concurrent"]), ("one at a time", result["sequential"])]
    if result["peer"]:
        phases.append(("llama-server, concurrent", result["peer"]))

    def with_ci(phase: dict, key: str) -> str:
        ci = phase.get(f"{key}_ci")
        return f"{phase[key]} [{ci[0]}, {ci[1]}]" if ci else str(phase[key])

    for name, phase in phases:
        table.add_row(
            name,
            *(str(phase[k]) for k in ("requests", "tokens", "seconds", "tok_s")),
            with_ci(phase, "ttft_p50_ms"),
            with_ci(phase, "ttft_p95_ms"),
            str(phase["errors"]),
        )
    console = Console()
    console.print(table)
    console.print(f"throughput ratio {result['throughput_ratio']}x, errors {result['errors']}")
    _finish(result, out, as_json)


@app.command("critic")
def critic_bench(
    critic: Path = typer.Option(None, "--critic", help="Critic artifact folder (default: PERSONALM_HOME/critic)."),
    data: Path = typer.Option(
        None, help="Data folder with prefeval/mcq_options (default: PERSONALM_DATA or ../shared/data)."
    ),
    pairs: int = typer.Option(512, min=8, help="(preference, answer) pairs scored batched and by the peer."),
    single: int = typer.Option(64, min=1, help="Pairs scored one at a time (the peer's sample)."),
    turns: int = typer.Option(12, min=1, help="Chat turns timed with and without the critic."),
    candidates: int = typer.Option(4, min=1, help="Candidate answers per turn with the critic (n)."),
    max_tokens: int = typer.Option(48, min=1, help="Token budget of each candidate answer."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local model that writes the answers."),
    seed: int = typer.Option(0),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Critic pairs/s (batched vs one at a time vs sentence-transformers CrossEncoder), load time, and
    the latency n candidates + critic add to a chat turn (p50, p95)."""
    from personalm.critic.data import prefeval_items
    from personalm.critic.model import PreferenceCritic, default_critic_dir
    from personalm.studies.bench import critic as bench

    folder = data_folder(data, required=["prefeval/mcq_options"])
    prefeval_items(folder)
    artifact = critic or default_critic_dir()
    PreferenceCritic.check_dir(artifact)
    result = bench.run(
        artifact, folder, pairs, single, turns, candidates, max_tokens, model, seed,
        log=lambda m: stderr.print(m, markup=False),
    )  # fmt: skip
    table = Table("critic scoring", "pairs", "pairs/s", "ours is")
    table.add_row(result["ours"], str(result["pairs"]), str(result["ours_pairs_s"]), "")
    table.add_row(result["peer_one_at_a_time"], str(result["one_at_a_time_pairs"]),
                  str(result["one_at_a_time_pairs_s"]), f"{result['speedup_vs_one_at_a_time']}x")  # fmt: skip
    table.add_row(result["peer_cross_encoder"], str(result["pairs"]), str(result["cross_encoder_pairs_s"]),
                  f"{result['speedup_vs_cross_encoder']}x")  # fmt: skip
    turns_table = Table("chat turn", "p50 ms", "p95 ms")
    turns_table.add_row("1 candidate, no critic", str(result["plain_p50_ms"]), str(result["plain_p95_ms"]))
    turns_table.add_row(f"{result['candidates']} candidates (one call) + critic", str(result["with_critic_p50_ms"]),
                        str(result["with_critic_p95_ms"]))  # fmt: skip
    turns_table.add_row("added", str(result["added_p50_ms"]), str(result["added_p95_ms"]))
    console = Console()
    console.print(table)
    console.print(turns_table)
    console.print(f"artifact load {result['load_s']} s; 1-min load average {result['load_average_1m']}")
    _finish(result, out, as_json)


@app.command("perce")
def perce_bench(
    batch_size: int = typer.Option(8, min=1, help="Persona-chat windows in the batch."),
    max_len: int = typer.Option(256, min=32, help="Longest example in tokens."),
    repeats: int = typer.Option(5, min=1, help="Timed steps per loss (after one warm-up step each)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local base model."),
    data: Path = typer.Option(None, help="Data folder with persona_chat/valid.csv (default: PERSONALM_DATA)."),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Trainer step time of PerCE vs plain CE on the same batch (PerCE adds one no-grad forward)."""
    from personalm.studies.bench import perce

    folder = data_folder(data, required=["persona_chat/valid.csv"])
    result = perce.run(folder, model, batch_size, max_len, repeats, log=lambda m: stderr.print(m, markup=False))
    table = Table("loss", "step s (median)", "tokens/s")
    table.add_row("CE", str(result["ce_step_s"]), str(result["ce_tok_s"]))
    table.add_row("PerCE", str(result["perce_step_s"]), str(result["perce_tok_s"]))
    console = Console()
    console.print(table)
    console.print(
        f"step time ratio PerCE / CE: {result['step_time_ratio']}x ({result['tokens_per_batch']} tokens per batch)"
    )
    _finish(result, out, as_json)


@app.command("merge")
def merge_bench(
    adapters: Path = typer.Option(..., help="Folder written by `personalm soups train`."),
    weights: str = typer.Option(
        "expertise.elementary=0.333,informativeness.concise=0.333,style.friendly=0.333", help="The new combination."
    ),
    repeats: int = typer.Option(3, min=1, help="Timed merges per contender (median reported)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local base model."),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Exact soup merge into a loaded base vs PEFT add_weighted_adapter(cat)+merge vs one P-MORL training run."""
    from personalm.adapters import list_adapters
    from personalm.soups.merge import parse_weights
    from personalm.studies.bench import merge

    if not adapters.is_dir():
        raise PersonalmError("no such folder (the one `personalm soups train` writes)", source=str(adapters))
    names = list(list_adapters(adapters))
    if not names:
        raise PersonalmError("no adapters in this folder (run `personalm soups train`)", source=str(adapters))
    result = merge.run(
        adapters, parse_weights(weights, names), model, repeats, log=lambda m: stderr.print(m, markup=False)
    )
    table = Table("contender", "seconds", "ours is")
    table.add_row("personalm exact soup (Σ w·B·A into loaded base)", str(result["merge_seconds"]), "")
    table.add_row(
        "PEFT add_weighted_adapter(cat) + merge", str(result["peft_cat_merge_seconds"]), f"{result['speedup_vs_peft']}x"
    )
    if result["pmorl_train_seconds"] is not None:
        table.add_row(
            "train one P-MORL adapter (DPO)", str(result["pmorl_train_seconds"]), f"{result['pmorl_train_over_merge']}x"
        )
    Console().print(table)
    _finish(result, out, as_json)


@app.command("fusion")
def fusion_bench(
    rows: int = typer.Option(16, min=1, help="Avatar chats decoded together (the batch measurement)."),
    turns: int = typer.Option(12, min=1, help="Chat turns timed with the voice alone and proxy-tuned."),
    max_tokens: int = typer.Option(64, min=1, help="Token budget of each answer."),
    adapter: Path = typer.Option(None, help="The voice adapter (default: a second copy of the base, same cost)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local base model."),
    seed: int = typer.Option(0),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Proxy-tuned decoding (an avatar's voice): our three streams on the Llama kernel vs the same on the
    transformers forward (tokens/s), and the latency it adds to a chat turn over the voice alone (p50, p95)."""
    from personalm.adapters import validate
    from personalm.studies.bench import fusion

    if adapter is not None:
        validate(adapter)
    result = fusion.run(rows, turns, max_tokens, model, adapter, seed, log=lambda m: stderr.print(m, markup=False))
    table = Table("proxy-tuned decode", "rows", "tokens/s", "ours is")
    table.add_row(result["ours"], str(rows), str(result["ours_tokens_s"]), "")
    table.add_row(result["peer"], str(rows), str(result["peer_tokens_s"]), f"{result['speedup']}x")
    turns_table = Table("chat turn", "p50 ms", "p95 ms")
    turns_table.add_row("the voice alone (adapter merged)", str(result["voice_alone_p50_ms"]),
                        str(result["voice_alone_p95_ms"]))  # fmt: skip
    turns_table.add_row("proxy-tuned (base + voice − base)", str(result["fused_p50_ms"]), str(result["fused_p95_ms"]))
    turns_table.add_row("added", str(result["added_p50_ms"]), str(result["added_p95_ms"]))
    console = Console()
    console.print(table)
    console.print(turns_table)
    console.print(f"p50 per generated token: {result['voice_alone_ms_per_token_p50']} ms the voice alone, "
                  f"{result['fused_ms_per_token_p50']} ms proxy-tuned")  # fmt: skip
    console.print(f"same greedy answers on both paths: {result['same_answers']}/{rows}; "
                  f"1-min load average {result['load_average_1m']}")  # fmt: skip
    _finish(result, out, as_json)


def _finish(result: dict, out: Path | None, as_json: bool) -> None:
    """Write the results file when asked and end with the JSON line when asked."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        typer.echo(json.dumps(result))


@app.command("train")
def train_bench(
    steps: int = typer.Option(6, min=2, help="Optimizer steps for each trainer."),
    batch_size: int = typer.Option(8, min=1),
    seq_len: int = typer.Option(256, min=128, help="Tokens per chat (a persona prompt plus its answer)."),
    rank: int = typer.Option(16, min=1, help="LoRA rank (all linear layers)."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local base model."),
    data: Path = PERSONAS_DATA,
    profile: bool = PROFILE,
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Our LoRA trainer vs TRL's SFTTrainer: tokens/s, ratio and fraction of the fp32 peak."""
    from personalm.studies.bench import train

    folder = data_folder(data, optional=[PERSONAS_FILE], fallback=True)
    result = train.run(steps, batch_size, seq_len, rank, folder, model, profile=profile,
                       log=lambda m: stderr.print(m, markup=False))  # fmt: skip
    table = Table("trainer", "tokens", "seconds", "tokens/s", "peak fraction", "ours is")
    table.add_row("personalm train sft", str(result["ours_tokens"]), str(result["ours_s"]), str(result["ours_tok_s"]),
                  f"{result['peak_fraction']:.1%}", "")  # fmt: skip
    table.add_row("TRL SFTTrainer", str(result["trl_tokens"]), str(result["trl_s"]), str(result["trl_tok_s"]),
                  f"{result['trl_peak_fraction']:.1%}", f"{result['speedup']}x")  # fmt: skip
    table.add_row("TRL SFTTrainer, freed memory kept", "", "", str(result["trl_kept_memory_tok_s"]), "",
                  f"{result['speedup_same_allocator']}x")  # fmt: skip
    Console().print(table)
    _print_profile(result["profile"])
    _finish(result, out, as_json)


@app.command("dpo")
def dpo_bench(
    steps: int = typer.Option(8, min=2, help="Optimizer steps for each trainer (one epoch over steps x batch pairs)."),
    batch_size: int = typer.Option(4, min=1, help="Pairs per step."),
    max_length: int = typer.Option(192, min=32, help="Longest prompt+answer in tokens (as `soups train`)."),
    lr: float = typer.Option(5e-4, min=0.0),
    beta: float = typer.Option(0.1, min=0.0),
    model: str = typer.Option(DEFAULT_MODEL, help="Local base model."),
    threads: int = typer.Option(None, min=1, help="Torch CPU threads (1 is steadier on a busy machine)."),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Our DPO trainer vs TRL's DPOTrainer on the same soups pairs: pairs/s, ratio, loss and reward accuracy."""
    from personalm.studies.bench import dpo

    result = dpo.run(steps, batch_size, max_length, lr, beta, model, threads,
                     log=lambda m: stderr.print(m, markup=False))  # fmt: skip
    table = Table("trainer", "seconds", "pairs/s", "loss on the pairs", "reward accuracy", "ours is")
    table.add_row("personalm soups train --trainer ours", str(result["ours_s"]), str(result["ours_pairs_s"]),
                  str(result["ours_loss"]), str(result["ours_reward_accuracy"]), "")  # fmt: skip
    table.add_row("TRL DPOTrainer (--trainer trl)", str(result["trl_s"]), str(result["trl_pairs_s"]),
                  str(result["trl_loss"]), str(result["trl_reward_accuracy"]), f"{result['speedup']}x")  # fmt: skip
    Console().print(table)
    _finish(result, out, as_json)


@app.command("dedup")
def dedup_bench(
    rows: int = typer.Option(
        200_000, min=1000, help="Rows for the MinHash stage (grown from the 5,000 real personas)."
    ),
    vectors: int = typer.Option(1_000_000, min=1000, help="Vectors for the embedding stage."),
    subset: int = typer.Option(
        50_000, min=1000, help="Prefix of the vectors also deduplicated by exact blockwise search."
    ),
    seed: int = typer.Option(0, help="Seed of the generated rows, vectors and samples."),
    engine: str = typer.Option(
        "local",
        help="ray: also run the MinHash stage on Ray (RAY_ADDRESS, else a local instance), rows/s beside local.",
    ),
    data: Path = PERSONAS_DATA,
    report: Path = typer.Option(None, help="Write results.json, minhash.png, embedding.png, report.html here."),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Our MinHash stage vs datasketch's MinHash + LSH loop; our embedding stage on 1M vectors vs exact search."""
    from personalm.executors import EXECUTORS
    from personalm.studies.bench import dedup, dedup_report
    from personalm.studies.harness import Study

    if engine not in EXECUTORS:
        raise PersonalmError(f"--engine {engine}: expected one of {', '.join(EXECUTORS)}")
    folder = data_folder(data, required=[PERSONAS_FILE])
    settings = {"rows": rows, "vectors": vectors, "subset": subset, "seed": seed, "engine": engine, "data": folder}
    study = Study(report, settings) if report else None
    result = dedup.run(folder, rows, vectors, subset, seed, log=lambda m: stderr.print(m, markup=False), engine=engine)
    table = Table("measure", "personalm", "peer", "ratio")
    for row in dedup_report.headline(result):
        table.add_row(*row)
    Console().print(table)
    if study:
        dedup_report.write(study, result)
        stderr.print(f"report -> {report / 'report.html'}", markup=False)
    _finish(result, out, as_json)


@app.command("synth")
def synth_bench(
    personas: int = typer.Option(64, min=2, help="Personas synthesized by the batched / concurrent runner."),
    sequential: int = typer.Option(8, min=1, help="Personas run one request at a time (tokens/s is compared)."),
    concurrency: int = typer.Option(16, min=1, help="Requests in flight for the HTTP runner."),
    max_tokens: int = typer.Option(64, min=1, help="Token budget per output, the same for every contender."),
    task: str = typer.Option("math", help="The synthesis task."),
    model: str = typer.Option(DEFAULT_MODEL, help="Local model (also served over HTTP on loopback)."),
    http: bool = typer.Option(True, "--http/--no-http", help="Also run (b): HTTP concurrent vs sequential."),
    data: Path = PERSONAS_DATA,
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Our batched synthesis vs one persona one request at a time (local and over HTTP), tokens/s and ratios."""
    from personalm.studies.bench import synth

    folder = data_folder(data, optional=[PERSONAS_FILE], fallback=True)
    result = synth.run(
        personas, sequential, concurrency, max_tokens, task, folder, model, http,
        log=lambda m: stderr.print(m, markup=False),
    )  # fmt: skip
    table = Table("runner", "rows", "tokens", "seconds", "tokens/s", "ours is")
    local = result["local"]
    table.add_row("synthesize (one batched call)", *_cells(local["ours"]), "")
    table.add_row(
        "reference: HF generate, one persona at a time",
        *_cells(local["reference_hf_one_at_a_time"]),
        f"{result['local_speedup']}x",
    )
    table.add_row(
        "our engine, one persona at a time",
        *_cells(local["own_engine_one_at_a_time"]),
        f"{result['local_speedup_vs_own_sequential']}x",
    )
    if "http" in result:
        h = result["http"]
        table.add_row(f"HTTP, {h['concurrency']} in flight", *_cells(h["concurrent"]), "")
        table.add_row("HTTP, sequential", *_cells(h["sequential"]), f"{result['http_speedup']}x")
    Console().print(table)
    _finish(result, out, as_json)


def _cells(side: dict) -> list[str]:
    return [str(side["rows"]), str(side["tokens"]), str(side["seconds"]), str(side["tok_s"])]


@app.command("retrieval")
def retrieval_bench(
    memories: int = typer.Option(100_000, min=100, help="Memories stored in each store."),
    queries: int = typer.Option(200, min=10, help="Queries (held-out speech sentences), the same for both."),
    validation_queries: int = typer.Option(
        200, min=10, help="Further held-out sentences on which our probes are matched to Chroma's recall."
    ),
    embedded: int = typer.Option(
        8192, min=10, help="Memories embedded for real with MiniLM (cached); the rest are noisy tiles of them."
    ),
    k: int = typer.Option(10, min=1, help="Results per query (both stores)."),
    candidates: int = typer.Option(50, min=1, help="Length of each of our keyword and dense lists before fusion."),
    seed: int = typer.Option(0, help="Seed of the shuffle and the tiles' noise."),
    rounds: int = typer.Option(2, min=1, help="Timed passes over the queries (latency percentiles pool them)."),
    data: Path = typer.Option(
        None, help="Data folder with speeches/ and personahub/ (default: PERSONALM_DATA or ../shared/data)."
    ),
    superseded: int = typer.Option(
        None, min=0, max=10_000_000, help="Earlier versions kept beside the memories (default: as many as memories)."
    ),
    out: Path = OUT,
    as_json: bool = AS_JSON,
) -> None:
    """Our SQLite memory store (hybrid and dense) vs Chroma (dense), same embeddings and k: latency, ingest, recall."""
    from personalm.studies.bench import retrieval

    folder = data_folder(data, required=["speeches", PERSONAS_FILE])
    result = retrieval.run(
        folder, memories, queries, embedded, k, candidates, seed, rounds,
        log=lambda m: stderr.print(m, markup=False), superseded=superseded, validation_queries=validation_queries,
    )  # fmt: skip
    table = Table("contender", "p50 ms", "p95 ms", f"recall@{k}", "ingest /s", "ours is (p95)")
    table.add_row("personalm hybrid (BM25 + dense, RRF)", str(result["hybrid_p50_ms"]), str(result["hybrid_p95_ms"]),
                  "", str(result["ingest_per_s"]), f"{result['hybrid_speedup_p95']}x")  # fmt: skip
    table.add_row(f"personalm dense ({result['matched_probes']} probes, memories read back)", str(result["dense_p50_ms"]), str(result["dense_p95_ms"]),
                  str(result[f"dense_recall_at_{k}"]), "", f"{result['dense_speedup_p95']}x")  # fmt: skip
    table.add_row("Chroma dense", str(result["chroma_p50_ms"]), str(result["chroma_p95_ms"]),
                  str(result[f"chroma_recall_at_{k}"]), str(result["chroma_ingest_per_s"]), "")  # fmt: skip
    Console().print(table)
    Console().print(
        f"{result['memories']} memories ({result['embedded']} embedded, {result['tiled']} noisy tiles) and "
        f"{result['superseded']} superseded versions beside them ({result.get('superseded_hits', 0)} returned), "
        f"ingest ours/Chroma {result['ingest_speedup']}x, 1-min load average {result['load_average_1m']}; "
        f"probes matched on {result['validation_queries']} validation queries: recall@{k} "
        f"{result[f'validation_dense_recall_at_{k}']} vs Chroma {result[f'validation_chroma_recall_at_{k}']}"
    )
    _finish(result, out, as_json)
