"""In-process vLLM on a CUDA GPU, named `vllm:MODEL` (MODEL: any local model name or directory).

vLLM brings its own continuous batching and paged attention; a LoRA adapter is applied per request
(vLLM's `LoRARequest`), so adapters and soups need no merge on this path. Our code is only the
bridge to personalm's TextModel: prompts rendered as every local backend renders them and sent as
token ids, personalm's per-prompt seeds (seed, prompt, occurrence) passed as vLLM's per-request
seeds, and scores read from vLLM's prompt log-probabilities. Without the `vllm` package, or
without a GPU, the name is one clear error; a vLLM server elsewhere is `openai:MODEL@URL`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from personalm.adapters import read_config, validate
from personalm.devices import resolve_device
from personalm.errors import PersonalmError
from personalm.models.base import (
    Generation,
    ProgressCallback,
    Prompt,
    SamplingParams,
    TextModel,
    TokenScores,
    occurrences,
)
from personalm.models.hf import encode_prompt
from personalm.models.local import weights_digest
from personalm.models.registry import VLLM_PREFIX
from personalm.models.sampling import row_seed


def import_vllm(name: str) -> Any:
    """The vllm package, or one line saying what to do without it."""
    try:
        import vllm
    except ImportError:
        raise PersonalmError(
            f"model '{name}' runs on vLLM, which is not installed here (pip install vllm, on a machine with a "
            "CUDA GPU); without it use the local model, or a vLLM server as openai:MODEL@URL"
        ) from None
    return vllm


class VLLMModel(TextModel):
    """A local model directory served by vLLM's offline engine in this process."""

    def __init__(self, path: str | Path, *, adapter: str | Path | None = None, name: str | None = None):
        self.path = Path(path)
        self.name = name or self.path.name
        vllm = import_vllm(VLLM_PREFIX + self.name)
        device = resolve_device()
        if device.type != "cuda":
            raise PersonalmError(f"model '{VLLM_PREFIX}{self.name}': vLLM needs a CUDA GPU, and this runs on {device}")
        self.adapter = Path(adapter) if adapter else None
        rank = 16
        if self.adapter is not None:
            validate(self.adapter)
            rank = int(read_config(self.adapter).get("r", rank))
        self.llm = vllm.LLM(
            model=str(self.path), enable_lora=self.adapter is not None, max_lora_rank=max(16, rank), seed=0
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._lora = None
        digest = weights_digest(self.path)
        if self.adapter is not None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest(self.adapter.name, 1, str(self.adapter))
            digest += "+" + weights_digest(self.adapter, contents=True)
        self.model_id = f"{VLLM_PREFIX}{self.name}@{digest}"

    def info(self) -> dict[str, Any]:
        return super().info() | {"path": str(self.path), "adapter": str(self.adapter) if self.adapter else None}

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        return encode_prompt(self.tokenizer, prompt, self.name)

    def generate(
        self, prompts: Sequence[Prompt], params: SamplingParams | None = None, progress: ProgressCallback | None = None
    ) -> list[Generation]:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        params = params or SamplingParams()
        if not prompts:
            return []
        requests, sampling = [], []
        for prompt, (key, occurrence) in zip(prompts, occurrences(prompts), strict=True):
            requests.append(TokensPrompt(prompt_token_ids=self.encode_prompt(prompt)))
            sampling.append(
                VLLMSampling(
                    max_tokens=params.max_tokens,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k if params.top_k > 0 else -1,
                    seed=None if params.greedy else row_seed(params.seed, key, occurrence),
                    stop=list(params.stop) or None,
                )
            )
        outputs = self.llm.generate(requests, sampling, lora_request=self._lora, use_tqdm=False)
        if progress:
            progress(len(outputs))
        return [
            Generation(
                o.outputs[0].text,
                "stop" if o.outputs[0].finish_reason == "stop" else "length",
                len(o.prompt_token_ids),
                len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        pairs = [
            (self.encode_prompt(c), self.tokenizer(t, add_special_tokens=False)["input_ids"])
            for c, t in zip(contexts, continuations, strict=True)
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=ctx + cont) for ctx, cont in pairs],
            VLLMSampling(max_tokens=1, prompt_logprobs=0),
            lora_request=self._lora,
            use_tqdm=False,
        )
        scores = []
        for (ctx, cont), output in zip(pairs, outputs, strict=True):
            rows = output.prompt_logprobs[len(ctx) :]  # one {token: Logprob} per position, the actual token included
            tokens = self.tokenizer.convert_ids_to_tokens(cont)
            scores.append(
                TokenScores(
                    tokens=[self.tokenizer.convert_tokens_to_string([t]) for t in tokens],
                    logprobs=[row[token].logprob for row, token in zip(rows, cont, strict=True)],
                )
            )
        return scores
