"""Decoding from a weighted sum of several (model, prompt) streams' next-token logits.

Why: an avatar's voice adapter is trained on chats that name the person and nothing more, and the
135M model given the retrieved passages *and* the adapter follows neither well (issue 24: adapter
+ retrieval read below retrieval alone). Proxy-tuning (Liu et al. 2024, "Tuning Language Models by
Proxy") composes the two at decoding instead: the base model reads the served chat (passages and
all), and the adapter's shift over its base, both reading the chat the adapter was trained on, is
added with a weight:

    logits = base(served) + w · (voice(plain) − base(plain))

Every stream is a (model, prompts, weight) triple; at each step all streams advance on the one
token chosen from the summed logits, so the sum is over aligned continuations. `ProxyTuned` is
that formula as a TextModel whose prompts are (served, plain) pairs, so the generation cache,
seeds and callers work on it as on any model.

Own code: transformers' logits processors see one model and one prompt (its classifier-free
guidance is one model's two prompts) and vLLM has no cross-model streams. A stream runs on the
Llama kernel where the architecture allows, else on the transformers forward with its KV cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from personalm.errors import PersonalmError
from personalm.models.base import (
    Generation,
    ProgressCallback,
    Prompt,
    SamplingParams,
    TextModel,
    TokenScores,
    apply_stop,
    occurrences,
)
from personalm.models.hf import logits_at
from personalm.models.llama_kernel import LlamaKernel, supports
from personalm.models.local import LocalModel
from personalm.models.sampling import choose_tokens, row_generator

FUSED_BATCH = 16  # rows decoded together (a model's kernel holds this many KV cache rows per stream it runs)
MAX_WEIGHT = 4.0  # beyond it the expert's shift swamps the base: answers stop being language


@dataclass(frozen=True)
class Stream:
    """One term of the sum: `model` reading `prompts` (one per output row), times `weight`."""

    model: LocalModel
    prompts: Sequence[Prompt]
    weight: float


def local_model(model: TextModel) -> LocalModel:
    """The local model under any wrappers (the generation cache): fusion needs every step's logits."""
    while not isinstance(model, LocalModel) and hasattr(model, "inner"):
        model = model.inner
    if not isinstance(model, LocalModel):
        raise PersonalmError(f"{model.model_id}: decoding from several models needs local models (their logits)")
    return model


class _KernelRows:
    """The rows of every stream on one model in one Llama kernel: each stream's prompts prefilled
    into slots of their own (never padded to another stream's length), then one decode call for all
    rows a step, so streams sharing a model (the base reads two chats) read its weights once a step."""

    def __init__(self, model: LocalModel, groups: list[list[list[int]]], max_new: int):
        longest = max(len(p) for prompts in groups for p in prompts)
        self.kernel = LlamaKernel(model.kernel_weights(), sum(map(len, groups)), longest + max_new)
        self.groups = groups
        self.positions = torch.tensor([len(p) for prompts in groups for p in prompts])

    def start(self) -> list[Tensor]:
        out, slot = [], 0
        for prompts in self.groups:
            out.append(self.kernel.prefill(slot, prompts).float())
            slot += len(prompts)
        return out

    def step(self, tokens: Tensor) -> list[Tensor]:
        logits = self.kernel.decode(tokens.repeat(len(self.groups)), self.positions)
        self.positions += 1
        return list(logits.float().split([len(p) for p in self.groups]))


class _ForwardRows:
    """A stream's rows on the transformers forward (any architecture): left padding, explicit
    positions, the model's own KV cache."""

    def __init__(self, model: LocalModel, prompts: list[list[int]], max_new: int):
        self.model, self.prompts = model, prompts
        self.past: Any = None
        # transformers 5 renamed `past_key_values` to `cache` within its major version
        self.cache_arg = "cache" if "cache" in inspect.signature(model.model.forward).parameters else "past_key_values"

    @torch.inference_mode()
    def start(self) -> list[Tensor]:
        width = max(map(len, self.prompts))
        ids = torch.zeros(len(self.prompts), width, dtype=torch.long)
        self.mask = torch.zeros(len(self.prompts), width, dtype=torch.long)
        for row, prompt in enumerate(self.prompts):
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            self.mask[row, width - len(prompt) :] = 1
        positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.next = self.mask.sum(-1)
        return [self._forward(ids, positions)]

    @torch.inference_mode()
    def step(self, tokens: Tensor) -> list[Tensor]:
        self.mask = torch.cat([self.mask, torch.ones(len(tokens), 1, dtype=torch.long)], dim=1)
        logits = self._forward(tokens[:, None], self.next[:, None])
        self.next = self.next + 1
        return [logits]

    def _forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        device = self.model.device
        out = self.model.model(input_ids=ids.to(device), attention_mask=self.mask.to(device),
                               position_ids=positions.to(device), use_cache=True, **{self.cache_arg: self.past})  # fmt: skip
        self.past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
        return out.logits[:, -1].float().cpu()


def _engines(streams: Sequence[Stream], encoded: list[list[list[int]]], max_new: int,
             forward: bool) -> list[tuple[list[int], _KernelRows | _ForwardRows]]:  # fmt: skip
    """(the streams it runs, by index; what runs them): one kernel per model for the streams that
    share it, or one transformers forward per stream."""
    by_model: dict[int, list[int]] = {}
    for i, stream in enumerate(streams):
        by_model.setdefault(id(stream.model), []).append(i)
    engines: list[tuple[list[int], _KernelRows | _ForwardRows]] = []
    for members in by_model.values():
        model = streams[members[0]].model
        if not forward and supports(model.model) and model.device.type == "cpu":
            engines.append((members, _KernelRows(model, [encoded[i] for i in members], max_new)))
        else:
            engines += [([i], _ForwardRows(model, encoded[i], max_new)) for i in members]
    return engines


def check_streams(streams: Sequence[Stream]) -> None:
    """Streams must agree on the rows and speak one vocabulary (the sum is over token ids)."""
    if not streams:
        raise PersonalmError("decoding from several models needs at least one stream")
    first = streams[0].model
    for stream in streams:
        if len(stream.prompts) != len(streams[0].prompts):
            raise PersonalmError("every stream needs one prompt per output row")
        if stream.model is not first and stream.model.tokenizer.get_vocab() != first.tokenizer.get_vocab():
            raise PersonalmError(
                f"{stream.model.name} and {first.name} do not share a tokenizer: their logits cannot be summed"
            )


def fused_generate(streams: Sequence[Stream], params: SamplingParams | None = None,
                   progress: ProgressCallback | None = None, batch: int = FUSED_BATCH,
                   forward: bool = False) -> list[Generation]:  # fmt: skip
    """One answer per row, each token drawn from Σ weight · logits over the streams (the first
    stream's model detokenizes and stops). A sampled row's random stream is seeded by all its
    prompts and their occurrence, so it does not depend on the batch it shared. `forward` runs
    every stream on the transformers forward even where the Llama kernel could (bench fusion's peer)."""
    params = params or SamplingParams()
    check_streams(streams)
    head = streams[0].model
    rows = list(zip(*(s.prompts for s in streams), strict=True))
    keys = occurrences([list(r) for r in rows])
    out: list[Generation] = []
    for start in range(0, len(rows), batch):
        chunk = range(start, min(start + batch, len(rows)))
        encoded = [[s.model.encode_prompt(s.prompts[i]) for i in chunk] for s in streams]
        for stream, prompts in zip(streams, encoded, strict=True):
            longest = max(map(len, prompts))
            if longest + params.max_tokens > stream.model.context_length:
                raise PersonalmError(f"a prompt of {longest} tokens plus {params.max_tokens} new ones does not fit "
                                     f"the context of {stream.model.context_length} tokens")  # fmt: skip
        generators = [None if params.greedy else row_generator(params.seed, *keys[i]) for i in chunk]
        tokens = _decode(streams, encoded, params, generators, head.eos_ids, forward)
        for ids, prompt_len in zip(tokens, (len(p) for p in encoded[0]), strict=True):
            done = bool(ids) and ids[-1] in head.eos_ids
            text, hit = apply_stop(head.decode_ids(ids[:-1] if done else ids), params.stop)
            out.append(Generation(text, "stop" if done or hit else "length", prompt_len, len(ids)))
        if progress:
            progress(len(chunk))
    return out


def _decode(streams: Sequence[Stream], encoded: list[list[list[int]]], params: SamplingParams,
            generators: list, eos: set[int], forward: bool) -> list[list[int]]:  # fmt: skip
    engines = _engines(streams, encoded, params.max_tokens, forward)

    def weighted(outputs: list[list[Tensor]]) -> Tensor:
        return sum(streams[i].weight * logits
                   for (members, _), each in zip(engines, outputs, strict=True)
                   for i, logits in zip(members, each, strict=True))  # fmt: skip

    logits = weighted([engine.start() for _, engine in engines])
    n = len(encoded[0])
    generated: list[list[int]] = [[] for _ in range(n)]
    live = [True] * n
    for step in range(params.max_tokens):
        picks = choose_tokens(logits, params, generators)
        for i, token in enumerate(picks.tolist()):
            if live[i]:
                generated[i].append(token)
                live[i] = token not in eos
        if not any(live) or step == params.max_tokens - 1:
            break
        logits = weighted([engine.step(picks) for _, engine in engines])
    return generated


def is_pair(prompt: object) -> bool:
    """Two prompts (text or chat), as a proxy-tuned model takes them."""
    return (isinstance(prompt, (tuple, list)) and len(prompt) == 2
            and all(isinstance(p, str) or (isinstance(p, list) and all(isinstance(m, dict) for m in p))
                    for p in prompt))  # fmt: skip


class ProxyTuned(TextModel):
    """`base` reading the served prompt plus `weight` times (`expert` − `base`) reading the
    expert's own prompt: prompts are (served, plain) pairs. `weight` 0 is the base on the served
    prompt; an expert that is its base adds nothing. `score` gives the fused distribution's own
    log-probabilities (for ranking its samples by the model's likelihood)."""

    def __init__(self, base: TextModel, expert: TextModel, weight: float):
        if not 0 <= weight <= MAX_WEIGHT:
            raise PersonalmError(f"proxy-tuning weight {weight:g}: expected a weight in [0, {MAX_WEIGHT:g}]")
        self.base, self.expert, self.weight = local_model(base), local_model(expert), weight
        check_streams([Stream(self.base, [], 1.0), Stream(self.expert, [], weight)])
        self.model_id = f"proxy:{self.base.model_id}+{weight:g}*({self.expert.model_id}-base)"

    @property
    def context_length(self) -> int:
        return min(self.base.context_length, self.expert.context_length)

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """The served prompt's tokens (the longest stream's: what a context budget checks)."""
        return self.base.encode_prompt(_split([prompt])[0][0])

    def terms(self, served: Sequence[Prompt], plain: Sequence[Prompt]) -> list[Stream]:
        """The streams of the sum (the base alone at weight 0)."""
        streams = [Stream(self.base, served, 1.0)]
        if self.weight:
            streams += [Stream(self.expert, plain, self.weight), Stream(self.base, plain, -self.weight)]
        return streams

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams | None = None,
                 progress: ProgressCallback | None = None) -> list[Generation]:  # fmt: skip
        served, plain = _split(prompts)
        return fused_generate(self.terms(served, plain), params, progress)

    def score(self, contexts: Sequence[Prompt], continuations: Sequence[str]) -> list[TokenScores]:
        if len(contexts) != len(continuations):
            raise ValueError("contexts and continuations must have the same length")
        served, plain = _split(contexts)
        out = []
        for i, text in enumerate(continuations):
            ids = self.base.tokenizer(text, add_special_tokens=False)["input_ids"]
            if not ids:
                out.append(TokenScores([], []))
                continue
            logits = sum(s.weight * _continuation_logits(s.model, s.prompts[0], ids)
                         for s in self.terms([served[i]], [plain[i]]))  # fmt: skip
            values = F.log_softmax(logits, dim=-1)[torch.arange(len(ids)), torch.tensor(ids)].tolist()
            tokens = [
                self.base.tokenizer.convert_tokens_to_string([t])
                for t in self.base.tokenizer.convert_ids_to_tokens(ids)
            ]
            out.append(TokenScores(tokens, values))
        return out

    def info(self) -> dict[str, Any]:
        return super().info() | {"base": self.base.model_id, "expert": self.expert.model_id, "weight": self.weight}


def _split(prompts: Sequence[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
    if not all(is_pair(p) for p in prompts):
        raise PersonalmError("a proxy-tuned model answers (served, plain) prompt pairs")
    return [p[0] for p in prompts], [p[1] for p in prompts]


def _continuation_logits(model: LocalModel, prompt: Prompt, ids: list[int]) -> Tensor:
    """`model`'s next-token logits at each token of the continuation `ids` after `prompt`."""
    context = model.encode_prompt(prompt)
    if len(context) + len(ids) > model.context_length:
        raise PersonalmError(f"context + continuation of {len(context) + len(ids)} tokens exceed the context "
                             f"of {model.context_length} tokens")  # fmt: skip
    row = torch.tensor([context + ids])
    positions = torch.zeros_like(row, dtype=torch.bool)
    positions[0, len(context) - 1 : len(context) + len(ids) - 1] = True
    with torch.inference_mode():
        return logits_at(model.model, row, torch.ones_like(row), positions).float().cpu()
