"""Training examples for a personal LoRA adapter (Second Me's idea: retrieval plus a model tuned
on the person): each utterance becomes an assistant turn, answering what was said to the person
(chat logs) or continuing the opening sentence of the passage (texts). Feed the file to
`personalm train sft`, then chat with `personalm avatar chat NAME --adapter DIR`."""

from __future__ import annotations

from collections.abc import Iterator

from personalm.avatars.api import AvatarMemory
from personalm.avatars.chat import system_prompt
from personalm.avatars.chunking import sentences
from personalm.avatars.profile import display_name
from personalm.avatars.retrieval import Recall

PAGE = 500


CONTINUE = "Continue this passage from one of your speeches, in your own words and style:\n"


def continue_message(cue: str) -> str:
    return f'{CONTINUE}"{cue}"'


def cue_of(message: str) -> str:
    """The cue of a `continue_message` (a chat message's own text otherwise)."""
    return message[len(CONTINUE) + 1 : -1] if message.startswith(CONTINUE) else message


def example(who: str, text: str, context: str | None = None, row_id: str = "") -> dict | None:
    """One row in the person's voice: the reply to what was said to them, or the passage continued
    from its first sentence (None: a one-sentence passage with nothing said to it)."""
    if context:
        user, reply = context, text
    else:
        parts = sentences(text)
        if len(parts) < 2:
            return None
        user, reply = continue_message(parts[0]), " ".join(parts[1:])
    system = {"role": "system", "content": system_prompt(who, None, Recall())}
    return {
        "id": row_id,
        "messages": [system, {"role": "user", "content": user}, {"role": "assistant", "content": reply}],
    }


def training_examples(memory: AvatarMemory, avatar: str, limit: int = 0) -> Iterator[dict]:
    """Rows with `messages` (system, user, assistant) for every usable utterance of the avatar."""
    who = display_name(avatar)
    made, offset = 0, 0
    while True:
        page = memory.list(avatar, "utterance", PAGE, offset)
        if not page:
            return
        offset += len(page)
        for utterance in page:
            row = example(who, utterance.text, utterance.context, str(utterance.id))
            if row is None:
                continue
            yield row
            made += 1
            if limit and made >= limit:
                return
