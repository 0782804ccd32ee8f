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


def training_examples(memory: AvatarMemory, avatar: str, limit: int = 0) -> Iterator[dict]:
    """Rows with `messages` (system, user, assistant) for every usable utterance of the avatar."""
    who = display_name(avatar)
    system = {"role": "system", "content": system_prompt(who, None, Recall())}
    made, offset = 0, 0
    while True:
        page = memory.list(avatar, "utterance", PAGE, offset)
        if not page:
            return
        offset += len(page)
        for utterance in page:
            if utterance.context:
                user, reply = utterance.context, utterance.text
            else:
                parts = sentences(utterance.text)
                if len(parts) < 2:
                    continue
                user, reply = continue_message(parts[0]), " ".join(parts[1:])
            yield {
                "id": str(utterance.id),
                "messages": [system, {"role": "user", "content": user}, {"role": "assistant", "content": reply}],
            }
            made += 1
            if limit and made >= limit:
                return
