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
    _personas_step(console, model, out)
    _synth_step(console, model, out)
    _tone_step(console, model, out)
    _explain_step(console, model, out)
    _avatar_step(console, model, out)
    _soups_step(console, model, out)


DEMO_FACTS = {
    "bread.txt": "Bread dough rises because yeast eats sugar and releases carbon dioxide gas. The gas is trapped by "
    "gluten, a stretchy network of proteins that forms when wheat flour is mixed with water and kneaded. A warm "
    "kitchen speeds the rise, while a cold fridge slows it down and lets flavour develop overnight.",
    "tides.txt": "Tides are caused mostly by the pull of the Moon on the oceans. Most coasts see two high tides and "
    "two low tides every day, about twelve hours and twenty-five minutes apart. The biggest tides, called spring "
    "tides, happen when the Sun and the Moon line up at new moon and full moon.",
    "bees.txt": "A honey bee colony can hold tens of thousands of workers but only one queen. Worker bees tell each "
    "other where flowers are with a waggle dance, whose angle points the way relative to the Sun. Honey is nectar "
    "that the bees dry by fanning their wings until most of the water is gone.",
    "volcano.txt": "A volcano forms where melted rock called magma rises through the crust. When the magma reaches "
    "the surface it is called lava. Some volcanoes erupt gently with runny lava, while others explode because "
    "their thick magma traps gas until the pressure bursts out.",
}


TONE_QUESTION = "Why are some tides bigger than others?"


def _tone_step(console: Console, model, out: Path) -> None:
    """A tone adapter from simulated data, at toy size: the same pipeline `tone experiment` runs."""
    from personalm.eval.tone import FleschScorer
    from personalm.models.embedder import Embedder
    from personalm.models.registry import load_model
    from personalm.tone.pipeline import ToneBuildConfig, ToneBuilder, write_dataset
    from personalm.train.loop import TrainConfig, train

    console.rule("[bold]6. a tone adapter from simulated data (toy size)")
    facts = out / "facts"
    facts.mkdir(parents=True, exist_ok=True)
    for name, text in DEMO_FACTS.items():
        (facts / name).write_text(text + "\n")
    config = ToneBuildConfig(source=str(facts), out=str(out / "tone"), examples=4, test=0, per_doc=1,
                             passage_words=30, test_fraction=0.0)  # fmt: skip
    with load_model(cache=True) as teacher:
        dataset = ToneBuilder(config, teacher, Embedder(), FleschScorer(), lambda m: console.print(m)).build()
    write_dataset(dataset, out / "tone")
    examples = dataset.examples()
    for example in examples[:2]:
        console.print(f"[cyan]Q:[/] {example['question']}\n[dim]reference:[/] {example['reference']}\n"
                      f"[green]tone rewrite[/] (Flesch {example['tone_score']:.0f}): {example['answer']}")  # fmt: skip
    if not examples:
        console.print("no rewrite passed the tone scorer at this toy size; see tone/rejects.jsonl")
        return
    result = train(TrainConfig(data=str(out / "tone" / "train.jsonl"), out=str(out / "tone" / "adapter"), epochs=2,
                               batch_size=4, max_len=256, save_every=100), log=console.print)  # fmt: skip
    console.print(f"adapter: {result.out} ({result.steps} steps, {result.tokens_per_s:.0f} tokens/s, "
                  f"loss {result.losses[0]:.2f} → {result.losses[-1]:.2f})")  # fmt: skip
    _tone_before_after(console, model, Path(result.out))


def _tone_before_after(console: Console, base, adapter: Path) -> None:
    """One grounded question answered by the (already loaded) base and by base + the tone adapter."""
    from personalm.eval.tone import FleschScorer
    from personalm.models.base import SamplingParams
    from personalm.models.registry import load_model
    from personalm.tone.prompts import answer_chat

    chat = answer_chat(DEMO_FACTS["tides.txt"], TONE_QUESTION)
    params = SamplingParams(max_tokens=64)
    answers = {"base": base.generate([chat], params)[0].text.strip()}
    with load_model(adapter=adapter) as tuned:
        answers["+ tone adapter"] = tuned.generate([chat], params)[0].text.strip()
    scores = FleschScorer().score(list(answers.values()))
    table = Table(*[f"{label} (Flesch {score:.0f})" for label, score in zip(answers, scores, strict=True)],
                  title=f"Q: {TONE_QUESTION}")  # fmt: skip
    table.add_row(*answers.values())
    console.print(table)
    console.print("[dim]a toy adapter (a few examples, 2 steps); `personalm tone experiment` measures the effect "
                  "on held-out questions (reports/tone)[/]")  # fmt: skip


def _explain_step(console: Console, model, out: Path) -> None:
    """PerContrast on a held-out persona-chat reply: which tokens the persona made likely."""
    from personalm.eval.persona import persona_recall
    from personalm.paths import data_dir
    from personalm.perce.contrast import PerContrast
    from personalm.perce.explain import Explained, terminal_text, top_tokens, write_html
    from personalm.perce.persona_chat import load_conversations, reply_rows, split

    console.rule("[bold]7. which reply tokens depend on the persona (PerContrast)")
    path = data_dir() / "persona_chat" / "valid.csv"
    if not path.is_file():
        console.print(f"[yellow]skipped: no persona-chat data at {path} (set PERSONALM_DATA)[/]")
        return
    rows = reply_rows(split(load_conversations(path), 0.2, seed=0)[1], window=6)
    row = next(r for r in rows if persona_recall(r["reply"], r["reply"], r["persona"]))
    chat = [*row["context"][-2:], {"role": "assistant", "content": row["reply"]}]
    influence = PerContrast.from_local(model).influence([(row["persona"], chat)], last_only=True)[0]
    special = set(model.tokenizer.all_special_tokens) | {"\n"}
    console.print(f"[cyan]persona:[/] {row['persona']}")
    console.print(f"[cyan]{chat[-2]['role']}:[/] {chat[-2]['content']}")
    console.print(terminal_text(influence, special))
    console.print("highest PIR: " + ", ".join(f"{t} {p:+.2f}" for t, p in top_tokens(influence, special)))
    write_html(out / "explain.html", [Explained(row["persona"], chat, influence)], special)
    console.print(f"heatmap: {out / 'explain.html'}")


def _avatar_step(console: Console, model, out: Path) -> None:
    from personalm.demo import avatars as avatar_demo

    console.rule(
        "[bold]8. an avatar from one person's words: avatar create, avatar update, chat with its voice and memory"
    )
    avatar_demo.run(console, model, out)


def _soups_step(console: Console, model, out: Path) -> None:
    from personalm.demo import soups as soups_demo

    console.rule("[bold]9. Personalized Soups: one question under two opposite preference combinations")
    soups_demo.run(console, model, out)


def _personas_step(console: Console, model, out: Path) -> None:
    from personalm.demo import personas as personas_demo

    console.rule("[bold]4. Persona Hub: texts -> personas -> one expansion round -> dedup -> diversity")
    personas_demo.run(model, out, console)


DEMO_PERSONAS = [
    "A beekeeper in Vermont who sells honey at farmers' markets.",
    "A night-shift nurse studying for a pharmacology exam.",
    "A retired sailor who restores wooden boats.",
]


def _synth_step(console: Console, model, out: Path) -> None:
    """Persona-driven synthesis: a math problem and a tool spec per persona, checked and flagged."""
    from rich.markup import escape

    from personalm.synth.run import SynthOptions, summary, synthesize
    from personalm.synth.tasks import get_task

    console.rule("[bold]5. persona-driven synthesis (math, tool)")
    personas = [{"id": f"demo{i}", "persona": p} for i, p in enumerate(DEMO_PERSONAS)]
    rows = []
    for task in ("math", "tool"):
        rows += synthesize(personas, get_task(task), model, SynthOptions(max_tokens=96, temperature=0.7))
    for row in rows:
        flags = ", ".join(row["flags"]) or "valid"
        console.print(
            f"[cyan]{row['task']}[/] for {escape(row['persona'])}\n[green]{escape(row['output'][:300])}[/] [dim]({flags})[/]"
        )
    write_rows(out / "synth.jsonl", rows)
    console.print(f"{summary(rows)} -> {out / 'synth.jsonl'}")
