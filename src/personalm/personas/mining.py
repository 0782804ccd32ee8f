"""Text-to-persona and persona-to-persona expansion through any TextModel.

Every persona carries its lineage: mined ones the id of their text (`source_text_id`), the
`variant` (read/write/like/dislike) and `granularity`; expanded ones their `parent_id`, the
`relation` asked for and the `round` (1..N), plus their root's `source_text_id`. Ids are derived
from that lineage, so a re-run produces the same ids. Generations go through the persistent
cache in batches: a killed run re-run resumes where it stopped, with no persona lost or doubled.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from personalm.models.base import Generation, Prompt, SamplingParams, stable_hash
from personalm.personas import prompts
from personalm.personas.quality import parse_answer, reject_reason

Generate = Callable[[Sequence[Prompt], SamplingParams], list[Generation]]
Row = dict[str, Any]
DEFAULT_ROUNDS = 6


@dataclass(frozen=True)
class MiningOptions:
    granularity: str = "fine"
    max_tokens: int = 64
    temperature: float = 0.7
    seed: int = 0
    batch: int = 64  # prompts per cached call: at most this much work is redone after a kill

    def params(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=0.95, seed=self.seed)


def _run(generate: Generate, batch: Sequence[Prompt], options: MiningOptions) -> list[Generation]:
    out: list[Generation] = []
    for start in range(0, len(batch), options.batch):
        out.extend(generate(batch[start : start + options.batch], options.params()))
    return out


def _split(rows: list[Row], answers: list[Generation], model_id: str) -> tuple[list[Row], list[Row]]:
    """Parse answers into rows; rows failing the quality filter go to the rejects with a reason."""
    kept, rejected = [], []
    for row, answer in zip(rows, answers, strict=True):
        persona = parse_answer(answer.text)
        reason = reject_reason(persona)
        full = row | {"persona": persona, "model_id": model_id, "raw": answer.text}
        if reason is None:
            kept.append(full)
        else:
            rejected.append(full | {"reason": reason})
    return kept, rejected


def extract(
    texts: Sequence[tuple[str, str]],
    generate: Generate,
    model_id: str,
    variants: Sequence[str] = ("read",),
    options: MiningOptions | None = None,
) -> tuple[list[Row], list[Row]]:
    """One persona per (text, variant); returns (personas, rejects)."""
    options = options or MiningOptions()
    rows, batch = [], []
    for text_id, text in texts:
        for variant in variants:
            rows.append(
                {
                    "id": f"{text_id}#{variant}",
                    "origin": "text",
                    "source_text_id": text_id,
                    "parent_id": None,
                    "relation": None,
                    "round": 0,
                    "variant": variant,
                    "granularity": options.granularity,
                    "seed": options.seed,
                }
            )
            batch.append(prompts.text_to_persona(text, variant, options.granularity))
    return _split(rows, _run(generate, batch, options), model_id)


def relation_for(parent_id: str, branch: int, relations: Sequence[str]) -> str:
    """A relation picked from the parent's id (stable across runs, varied across personas)."""
    return relations[(int(stable_hash(parent_id)[:8], 16) + branch) % len(relations)]


def expand(
    personas: Sequence[Row],
    generate: Generate,
    model_id: str,
    rounds: int = DEFAULT_ROUNDS,
    fanout: int = 1,
    relations: Sequence[str] = prompts.RELATIONS,
    options: MiningOptions | None = None,
    on_round: Callable[[int, int], None] | None = None,
) -> tuple[list[Row], list[Row]]:
    """Grow `fanout` related personas from every persona of the previous round, `rounds` times.

    Returns (new personas of all rounds, rejects). Rejected personas are not expanded further.
    """
    options = options or MiningOptions()
    frontier = list(personas)
    grown: list[Row] = []
    rejects: list[Row] = []
    for round_ in range(1, rounds + 1):
        rows, batch = [], []
        for parent in frontier:
            for branch in range(fanout):
                relation = relation_for(parent["id"], branch, relations)
                rows.append(
                    {
                        "id": f"{parent['id']}>{branch}",
                        "origin": "expansion",
                        "source_text_id": parent.get("source_text_id"),
                        "parent_id": parent["id"],
                        "relation": relation,
                        "round": round_,
                        "variant": None,
                        "granularity": options.granularity,
                        "seed": options.seed,
                    }
                )
                batch.append(prompts.persona_to_persona(parent["persona"], relation, options.granularity))
        kept, rejected = _split(rows, _run(generate, batch, options), model_id)
        grown.extend(kept)
        rejects.extend(rejected)
        frontier = kept
        if on_round:
            on_round(round_, len(kept))
        if not frontier:
            break
    return grown, rejects
