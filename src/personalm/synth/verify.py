"""Math verification as in Persona Hub: solve each problem k times with different seeds and keep it
as a test item only when at least `min_agree` solutions reach the same final answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from personalm.models.base import Message, ProgressCallback, SamplingParams, TextModel
from personalm.synth.parsers import final_answer

SOLVE = (
    "Solve this math problem. Work step by step, briefly, then end with one line "
    "'Final answer: <answer>' where <answer> is only the number or expression.\n\nProblem: {problem}"
)


@dataclass(frozen=True)
class VerifyOptions:
    k: int = 3
    min_agree: int = 2
    max_tokens: int = 256
    temperature: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or not 1 <= self.min_agree <= self.k:
            raise ValueError("need k >= 1 and 1 <= min_agree <= k")


def solve_prompt(problem: str) -> list[Message]:
    return [{"role": "user", "content": SOLVE.format(problem=problem.strip())}]


def agreement(answers: Sequence[str | None]) -> tuple[str | None, int]:
    """(most common final answer, how many solutions gave it); unparsed answers never agree."""
    counts = Counter(a for a in answers if a)
    if not counts:
        return None, 0
    answer, count = counts.most_common(1)[0]
    return answer, count


def verify(
    rows: Sequence[dict[str, Any]],
    model: TextModel,
    options: VerifyOptions,
    progress: ProgressCallback | None = None,
) -> list[dict[str, Any]]:
    """Rows with `verification` {answers, majority, agreement, k, seeds, kept}; invalid rows are not
    solved (agreement 0, not kept). One batched call per seed."""
    todo = [i for i, r in enumerate(rows) if r["valid"]]
    problems = [rows[i]["parsed"].get("problem") or rows[i]["output"] for i in todo]
    seeds = [options.seed + 1 + j for j in range(options.k)]
    answers: list[list[str | None]] = [[] for _ in todo]
    for seed in seeds:
        params = SamplingParams(max_tokens=options.max_tokens, temperature=options.temperature, top_p=0.95, seed=seed)
        for slot, generation in enumerate(model.generate([solve_prompt(p) for p in problems], params, progress)):
            answers[slot].append(final_answer(generation.text))
    by_row = dict(zip(todo, answers, strict=True))
    out = []
    for i, row in enumerate(rows):
        found = by_row.get(i, [])
        majority, count = agreement(found)
        verdict = {
            "answers": [a or "" for a in found],
            "majority": majority or "",
            "agreement": count,
            "k": options.k,
            "seeds": seeds,
            "kept": count >= options.min_agree,
        }
        out.append(row | {"verification": verdict})
    return out
