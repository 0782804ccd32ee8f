"""The soups step of `personalm demo`: toy-size feedback, one DPO adapter per pole, and one
question answered under two opposite preference combinations merged on the fly."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from personalm.adapters import exact_factors, load_adapter, soup_applied
from personalm.eval.judges import ProgrammaticJudge
from personalm.models.base import SamplingParams
from personalm.soups.collect import CollectConfig, collect
from personalm.soups.dpo import DPOSettings, train_adapter
from personalm.soups.preferences import Preferences
from personalm.soups.prompts import BUILTIN_PROMPTS
from personalm.tables import write_rows

OPPOSITES = (
    ("expertise.elementary", "informativeness.concise", "style.friendly"),
    ("expertise.phd", "informativeness.informative", "style.unfriendly"),
)
QUESTION = BUILTIN_PROMPTS[-1]


def run(console: Console, model, out: Path) -> None:
    """Toy sizes (4 prompts, 4 DPO steps per pole) so it runs in a couple of minutes on a CPU;
    `soups collect/train/experiment` are the same code at full size."""
    out = out / "soups"
    prefs = Preferences.default()
    config = CollectConfig(samples=3, max_pairs=3, max_tokens=32)
    sizes = collect(model, ProgrammaticJudge(), prefs, list(BUILTIN_PROMPTS[:4]), out / "data", config,
                    log=lambda _: None)  # fmt: skip
    console.print("DPO pairs per pole (judged one preference at a time): "
                  + ", ".join(f"{k} {n}" for k, n in sizes.items() if k != "pmorl"))  # fmt: skip
    settings = DPOSettings(max_steps=4, batch_size=2, max_length=128, lr=1e-3, threads=None)
    adapters = {}
    for key in sorted({pole for combination in OPPOSITES for pole in combination}):
        if not sizes.get(key):
            console.print(f"{key}: the judge found every toy pair a tie; this pole sits out")
            continue
        train_adapter(out / "data" / "dpo" / f"{key}.jsonl", out / "adapters" / key, settings, log=lambda _: None)
        adapters[key] = load_adapter(out / "adapters" / key, key)
    table = Table("soup (weights 1/n each)", f"answer to: {QUESTION}")
    rows = []
    for combination in OPPOSITES:
        present = [k for k in combination if k in adapters]
        if not present:
            continue
        weights = {k: 1 / len(present) for k in present}
        with soup_applied(model, exact_factors(adapters, weights), "+".join(present)) as soup:
            answer = soup.generate([[{"role": "user", "content": QUESTION}]], SamplingParams(max_tokens=64))[0].text
        table.add_row("\n".join(present), escape(answer))
        rows.append({"weights": weights, "question": QUESTION, "answer": answer})
    console.print(table)
    write_rows(out / "answers.jsonl", rows)
    console.print(f"adapters: {out / 'adapters'}; answers: {out / 'answers.jsonl'}")
