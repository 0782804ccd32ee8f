"""Where synthesis generates: in this process (`local`) or on Ray actors (`--engine ray`).

The Ray path reuses the Persona Hub engine's generator (Ray Data batches on model actors, each
with the generation cache, rows put back in input order) behind the TextModel interface, so the
synthesis code runs unchanged on either. Samples are seeded by a prompt's occurrence within one
call; Ray splits a call into batches, so only a prompt repeated across batches (never the case
for distinct personas) can be sampled differently from the local run.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from personalm.errors import PersonalmError
from personalm.models.base import Generation, ProgressCallback, Prompt, SamplingParams, TextModel, TokenScores
from personalm.personas.mining import Generate


class EngineModel(TextModel):
    """Generation through an engine's batch function; scoring needs a model in this process."""

    def __init__(self, generate: Generate, model_id: str):
        self._generate = generate
        self.model_id = model_id

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None, progress: ProgressCallback | None = None
    ) -> list[Generation]:
        out = self._generate(list(prompts), params or SamplingParams()) if prompts else []
        if progress:
            progress(len(out))
        return out

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        raise PersonalmError("scoring runs on a model in this process; use --engine local")


@contextmanager
def synthesis_model(engine: str, model: str, cache: bool, api_key: str | None, concurrency: int) -> Iterator[TextModel]:
    """The model synthesis talks to, on the chosen engine; closed on exit."""
    from personalm.models.registry import load_model
    from personalm.executors import get_engine

    runner = get_engine(engine)
    if runner.name == "local":
        with load_model(model, cache=cache, api_key=api_key, max_concurrency=concurrency) as loaded:
            yield loaded
        return
    with runner.generator(model, cache, api_key, concurrency) as (generate, model_id):
        yield EngineModel(generate, model_id)
