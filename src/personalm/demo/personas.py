"""The Persona Hub step of `personalm demo`: texts -> personas -> one expansion round -> dedup ->
diversity, on whatever model the demo loaded."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from rich.console import Console
from rich.table import Table

from personalm.eval import diversity
from personalm.executors import Executor
from personalm.models.base import TextModel
from personalm.personas import mining
from personalm.personas.dedup import DedupOptions, dedup_table
from personalm.tables import write_rows

DEMO_TEXTS = [
    (
        "sourdough",
        "Feed the sourdough starter twice a day with equal weights of flour and water; bake when it doubles.",
    ),
    ("attention", "Multi-head self-attention lets every token weigh every other token; heads specialise in syntax."),
    ("tides", "Spring tides follow the new and full moon, when the sun and moon pull along the same line."),
    ("pension", "Early retirees can bridge the years before their pension with a drawdown from index funds."),
    ("knitting", "Cast on 64 stitches, knit two rows of ribbing, then switch to a stockinette body for the hat."),
    ("triage", "In the emergency room, triage nurses rank patients by urgency, not by arrival time."),
]


def run(model: TextModel, out: Path, console: Console) -> None:
    generate = model.generate
    options = mining.MiningOptions(max_tokens=48, temperature=0.7, seed=0)
    personas, rejects = mining.extract(DEMO_TEXTS, generate, model.model_id, ("read", "like"), options)
    console.print(f"text-to-persona: {len(personas)} personas from {len(DEMO_TEXTS)} texts ({len(rejects)} rejected)")
    for row in personas[:4]:
        console.print(f"  [cyan]{row['id']}[/]: {row['persona']}")
    grown, more_rejects = mining.expand(personas, generate, model.model_id, rounds=1, options=options)
    console.print(f"persona-to-persona, 1 round: {len(grown)} more ({len(more_rejects)} rejected)")
    for row in grown[:3]:
        console.print(f"  [cyan]{row['parent_id']}[/] -> {row['relation']}: {row['persona']}")
    everyone = personas + grown
    executor = Executor()
    table = pa.Table.from_pylist([{"id": r["id"], "persona": r["persona"]} for r in everyone])
    result = dedup_table(table, DedupOptions(embedding_threshold=0.8), executor)
    s = result.summary
    console.print(
        f"dedup: kept {s['kept_rows']} of {s['input_rows']} (MinHash dropped {s['dropped_minhash']}, "
        f"embeddings at cosine >= 0.8 dropped {s['dropped_embedding']})"
    )
    report = Table("set", "rows", "mean pairwise cosine", "distinct-2", "Vendi")
    for name, rows in (("all personas", table), ("after dedup", result.kept)):
        texts = rows.column("persona").to_pylist()
        m = diversity.measure(texts, executor.embed(texts, None))
        report.add_row(name, str(m["rows"]), str(m["mean_pairwise_cosine"]), str(m["distinct_2"]), str(m["vendi"]))
    console.print(report)
    write_rows(out / "personas.jsonl", everyone)
    write_rows(out / "personas.dedup.jsonl", result.kept.to_pylist())
    write_rows(out / "personas.dedup.dropped.jsonl", result.dropped.to_pylist())
    console.print(f"wrote {out / 'personas.jsonl'} and {out / 'personas.dedup.jsonl'}")
