"""Chat examples → token ids with labels on assistant tokens only, validated line by line.

An example is a row with a `messages` list of {"role", "content"} (roles system/user/assistant) and,
optionally, a `persona` string: the profile of the person the replies are personal to. The persona
goes into the system message (after the row's own system text, if any, under "Your persona:"). A
loss that compares two renderings of each chat (PerCE: with and without the persona) passes its
`Contrast`, which returns both; their supervised tokens must agree.
Each assistant turn is supervised: its tokens are what the chat template adds after the
generation prompt of the turns before it (content, end-of-turn marker). Everything else gets label
-100. Over-long examples follow `overlong`: "truncate" keeps the first `max_len` tokens (an example
left with no assistant token is dropped and counted), "drop" skips them, "error" stops with the
example's line.

A preference pair (DPO) is a row with `prompt`, `chosen` and `rejected` message lists (the last two
assistant turns only): it becomes one example whose ids are prompt+chosen and whose `rejected_*`
are prompt+rejected, each supervised on its answer alone, so the pair's two log-probabilities
cover exactly the answer tokens; `overlong` applies to each side. A batch of pairs holds one row
per pair (`collate_pairs`), the shared prompt once.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from personalm.errors import PersonalmError
from personalm.tables import input_format, read_rows, require

IGNORE = -100
ROLES = {"system", "user", "assistant"}
OVERLONG_POLICIES = ("truncate", "drop", "error")
PERSONA_HEADER = "Your persona:"

Contrast = Callable[[object, list[dict[str, str]], str | None], tuple[list[int], list[int], list[int], list[int]]]
"""(tokenizer, messages, persona or None) -> (ids, labels) to train on and a second (ids, labels) of
the same chat with the same supervised tokens; raises PersonalmError for a row it cannot render."""


@dataclass
class Example:
    """Token ids and labels; `contrast_*` is the loss's second rendering of the chat (`Contrast`, e.g.
    without the persona for PerCE), `rejected_*` the rejected completion of a preference pair (then
    ids/labels are the chosen one)."""

    line: int
    input_ids: list[int]
    labels: list[int]
    contrast_ids: list[int] | None = None
    contrast_labels: list[int] | None = None
    rejected_ids: list[int] | None = None
    rejected_labels: list[int] | None = None

    @property
    def supervised(self) -> int:
        return sum(label != IGNORE for label in self.labels)

    @property
    def length(self) -> int:
        """What length bucketing sorts by: the tokens of the row (a pair's two sides share one row)."""
        return len(self.input_ids) + len(self.rejected_ids or ())


@dataclass
class Dataset:
    examples: list[Example]
    truncated: int = 0
    dropped: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)


def validate_messages(messages: object, source: str, line: int) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise PersonalmError("'messages' must be a non-empty list of {role, content}", source=source, line=line)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise PersonalmError(f"messages[{i}] needs 'role' and 'content'", source=source, line=line)
        if message["role"] not in ROLES:
            raise PersonalmError(
                f"messages[{i}].role is {message['role']!r}; expected system, user or assistant",
                source=source,
                line=line,
            )
        if not isinstance(message["content"], str):
            raise PersonalmError(f"messages[{i}].content must be a string", source=source, line=line)
        if message["role"] == "assistant" and not message["content"].strip():
            raise PersonalmError(f"messages[{i}] is an empty assistant turn", source=source, line=line)
    if not any(m["role"] == "assistant" for m in messages):
        raise PersonalmError("no assistant turn to learn from", source=source, line=line)
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def with_persona(messages: list[dict[str, str]], persona: str) -> list[dict[str, str]]:
    """The chat with the persona appended to its system message (one is added when absent)."""
    base, rest = split_system(messages)
    block = f"{PERSONA_HEADER}\n{persona.strip()}"
    return [{"role": "system", "content": f"{base}\n\n{block}" if base else block}, *rest]


def split_system(messages: list[dict[str, str]]) -> tuple[str, list[dict[str, str]]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], list(messages[1:])
    return "", list(messages)


def cut_to_supervised(ids: list[int], labels: list[int], count: int) -> tuple[list[int], list[int]]:
    """The shortest prefix that still holds `count` supervised tokens (aligns a truncated pair)."""
    seen = 0
    for position, label in enumerate(labels):
        seen += label != IGNORE
        if seen == count:
            return ids[: position + 1], labels[: position + 1]
    return ids, labels


def tokenize_chat(tokenizer, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Ids of the whole rendered chat and labels that keep only the assistant turns' tokens."""
    ids: list[int] = []
    labels: list[int] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if full[: len(prompt)] != prompt or prompt[: len(ids)] != ids:
            raise PersonalmError("the chat template does not render turns as a growing prefix; cannot mask labels")
        labels += [IGNORE] * (len(prompt) - len(ids)) + full[len(prompt) :]
        ids = full
    return ids, labels


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_overlong(overlong: str) -> None:
    if overlong not in OVERLONG_POLICIES:
        raise PersonalmError(f"--overlong {overlong}: expected one of {', '.join(OVERLONG_POLICIES)}")


def fit_to_max_len(
    sequences: list[tuple[list[int], list[int]]],
    max_len: int,
    overlong: str,
    dataset: Dataset,
    too_long: str,
    source: str,
    line: int,
) -> list[tuple[list[int], list[int]]] | None:
    """Apply the `overlong` policy to the (ids, labels) sequences of one row (an example, or a pair's
    two sides): unchanged if all fit; else an error naming the line (`too_long` formatted with the
    longest length `n`), None for a dropped row, or every sequence cut to `max_len` (counted)."""
    longest = max(len(ids) for ids, _ in sequences)
    if longest <= max_len:
        return sequences
    if overlong == "error":
        raise PersonalmError(f"{too_long.format(n=longest)}, over --max-len {max_len}", source=source, line=line)
    if overlong == "drop":
        dataset.dropped += 1
        return None
    dataset.truncated += 1
    return [(ids[:max_len], labels[:max_len]) for ids, labels in sequences]


def read_examples(
    path: str | Path, column: str = "messages", require_persona: bool = False
) -> list[tuple[int, list[dict[str, str]], str | None]]:
    """(line, messages, persona) of every row, validated without a tokenizer (so a bad file is
    reported before any model loads); a loss with a contrast (PerCE) requires a persona per row."""
    source = str(path)
    rows = []
    for line, row in read_rows(path, input_format(source, None)):
        messages = validate_messages(require(row, column, list, source, line), source, line)
        persona = row.get("persona")
        if persona is not None and (not isinstance(persona, str) or not persona.strip()):
            raise PersonalmError("'persona' must be a non-empty string", source=source, line=line)
        if require_persona and persona is None:
            raise PersonalmError(
                "no 'persona' field (this loss contrasts each reply with and without it)", source=source, line=line
            )
        if persona is None and messages[0]["role"] == "assistant":
            raise PersonalmError(
                "messages[0] is an assistant turn with nothing before it; start with the user (or system) "
                "message it answers",
                source=source,
                line=line,
            )
        rows.append((line, messages, persona))
    return rows


def load_examples(
    path: str | Path,
    tokenizer,
    max_len: int,
    overlong: str = "truncate",
    column: str = "messages",
    contrast: Contrast | None = None,
) -> Dataset:
    """Tokenized examples; with a `contrast` each carries the loss's second rendering of its chat."""
    check_overlong(overlong)
    source = str(path)
    dataset = Dataset([])
    for line, messages, persona in read_examples(path, column, require_persona=contrast is not None):
        bare_ids = bare_labels = None
        if contrast is not None:
            try:
                ids, labels, bare_ids, bare_labels = contrast(tokenizer, messages, persona)
            except PersonalmError as err:
                raise PersonalmError(str(err), source=source, line=line) from None
        else:
            ids, labels = tokenize_chat(tokenizer, with_persona(messages, persona) if persona else messages)
        fitted = fit_to_max_len([(ids, labels)], max_len, overlong, dataset, "example has {n} tokens", source, line)
        if fitted is None:
            continue
        example = Example(line, *fitted[0])
        if bare_ids is not None:
            example.contrast_ids, example.contrast_labels = cut_to_supervised(bare_ids, bare_labels, example.supervised)
        if example.supervised == 0:
            dataset.dropped += 1
            continue
        dataset.examples.append(example)
    if not dataset.examples:
        raise PersonalmError("no usable training examples", source=source)
    return dataset


def read_pairs(path: str | Path) -> list[tuple[int, list[dict], list[dict], list[dict]]]:
    """(line, prompt, chosen, rejected) of every preference row, validated: the prompt is a list of
    system/user/assistant messages, each completion a non-empty list of assistant messages."""
    source = str(path)
    pairs = []
    for line, row in read_rows(path, input_format(source, None)):
        prompt = require(row, "prompt", list, source, line)
        if not prompt:
            raise PersonalmError("'prompt' is empty (the messages the answers reply to)", source=source, line=line)
        chats = []
        for column in ("chosen", "rejected"):
            side = require(row, column, list, source, line)
            if not side or any(not isinstance(m, dict) or m.get("role") != "assistant" for m in side):
                raise PersonalmError(
                    f"'{column}' must be a non-empty list of assistant messages", source=source, line=line
                )
            chats.append(validate_messages(prompt + side, source, line))
        cut = len(prompt)
        pairs.append((line, chats[0][:cut], chats[0][cut:], chats[1][cut:]))
    return pairs


def tokenize_completion(
    tokenizer, prompt: list[dict[str, str]], completion: list[dict[str, str]]
) -> tuple[list[int], list[int]]:
    """Ids of prompt+completion with labels on the completion's tokens only (assistant turns inside
    the prompt are context)."""
    ids, labels = tokenize_chat(tokenizer, prompt + completion)
    context = len(_render(tokenizer, prompt, generation_prompt=True))
    return ids, [IGNORE] * context + labels[context:]


def load_pairs(path: str | Path, tokenizer, max_len: int, overlong: str = "truncate") -> Dataset:
    """Tokenized preference pairs; `overlong` applies to each side (a pair that loses every
    completion token of a side is dropped)."""
    check_overlong(overlong)
    source = str(path)
    dataset = Dataset([])
    pairs = read_pairs(path)
    if not pairs:
        raise PersonalmError("no preference pairs", source=source)
    for line, prompt, chosen, rejected in pairs:
        sides = [tokenize_completion(tokenizer, prompt, side) for side in (chosen, rejected)]
        fitted = fit_to_max_len(sides, max_len, overlong, dataset, "pair has a {n}-token side", source, line)
        if fitted is None:
            continue
        (ids, labels), (rejected_ids, rejected_labels) = fitted
        if all(t == IGNORE for t in labels) or all(t == IGNORE for t in rejected_labels):
            dataset.dropped += 1
            continue
        dataset.examples.append(Example(line, ids, labels, rejected_ids=rejected_ids, rejected_labels=rejected_labels))
    if not dataset.examples:
        raise PersonalmError(f"no preference pair has a completion token within --max-len {max_len}", source=source)
    return dataset


def bucketed_batches(examples: list[Example], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar length (little padding), in a seeded order that changes every epoch.

    Examples are shuffled, cut into windows of 50 batches, sorted by length inside each window and
    batched; the batches are then shuffled, so each batch is homogeneous but the order is random.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: examples[i].length)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; padding is masked out of attention and labels. Examples that carry
    a second rendering (`Contrast`) add `contrast_input_ids/labels/attention_mask`. Preference pairs
    go through `collate_pairs`."""
    if all(e.rejected_ids is not None for e in examples):
        return collate_pairs(examples, pad_id)
    batch = pad([(e.input_ids, e.labels) for e in examples], pad_id)
    if all(e.contrast_ids is not None for e in examples):
        bare = pad([(e.contrast_ids, e.contrast_labels) for e in examples], pad_id)
        batch |= {f"contrast_{name}": tensor for name, tensor in bare.items()}
    return batch


def collate_pairs(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Each pair as one row: prompt, chosen answer, rejected answer. A 4D mask lets each answer see
    the prompt and itself only, and each answer's positions continue from the prompt, so the row
    computes exactly what prompt+chosen and prompt+rejected would, with the shared prompt run once.

    The supervised tokens come as index tensors: `target_row`/`target_col` (the position whose
    logits predict it: the prompt's last token for an answer's first token), `target_label`, and
    `target_sequence` (pair i's chosen answer is sequence i, its rejected one `pairs` + i)."""
    n = len(examples)
    ids, pos, seg = [], [], []
    rows, cols, labels, sequences = [], [], [], []
    for row, e in enumerate(examples):
        context = next(i for i, label in enumerate(e.labels) if label != IGNORE)
        chosen_len, rejected_len = len(e.input_ids), len(e.rejected_ids)
        ids.append(e.input_ids + e.rejected_ids[context:])
        pos.append(list(range(chosen_len)) + list(range(context, rejected_len)))
        seg.append([0] * context + [1] * (chosen_len - context) + [2] * (rejected_len - context))
        for side, (side_labels, offset) in enumerate(((e.labels, context), (e.rejected_labels, chosen_len))):
            for t in range(max(context, 1), len(side_labels)):
                if side_labels[t] != IGNORE:
                    rows.append(row)
                    cols.append(context - 1 if t == context else offset + t - context - 1)
                    labels.append(side_labels[t])
                    sequences.append(side * n + row)
    width = max(len(row_ids) for row_ids in ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    for row in range(n):
        length = len(ids[row])
        input_ids[row, :length] = torch.tensor(ids[row])
        position_ids[row, :length] = torch.tensor(pos[row])
        segment[row, :length] = torch.tensor(seg[row])
    query, key = segment[:, :, None], segment[:, None, :]
    visible = ((key == query) | (key == 0)) & (key >= 0) & (position_ids[:, None, :] <= position_ids[:, :, None])
    visible |= torch.eye(width, dtype=torch.bool)  # padding queries see themselves (no empty softmax)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": visible[:, None],
        "target_row": torch.tensor(rows),
        "target_col": torch.tensor(cols),
        "target_label": torch.tensor(labels),
        "target_sequence": torch.tensor(sequences),
        "pairs": torch.tensor(n),
        "tokens": torch.tensor(sum(len(row_ids) for row_ids in ids)),
    }


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (unpadded) tokens the batch runs through the model."""
    return int(batch["tokens"]) if "tokens" in batch else int(batch["attention_mask"].sum())


def pad(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (row_ids, row_labels) in enumerate(rows):
        n = len(row_ids)
        ids[row, :n] = torch.tensor(row_ids)
        labels[row, :n] = torch.tensor(row_labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
