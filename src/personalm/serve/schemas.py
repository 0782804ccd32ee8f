"""Request bodies of the OpenAI-compatible API, validated strictly: wrong types are refused (400),
never coerced ("10" is not a number, "yes" not a boolean), and never reach a route as a 500."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator

from personalm.avatars.preferences import MAX_CANDIDATES

MAX_TOKENS_LIMIT = 1024
MAX_TEXT_CHARS = 32_000
MAX_ITEMS = 256
MAX_POLES = 64
MAX_WEIGHT = 10.0
Weight = Annotated[float, Strict(), Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True)

    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling fields chat and text completions share (OpenAI defaults)."""

    model_config = ConfigDict(strict=True, extra="ignore", validate_default=True)

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)
    user: str | None = Field(default=None, max_length=256)
    preference_weights: dict[str, Weight] | None = Field(
        default=None,
        max_length=MAX_POLES,
        description=f"Models `soup` and `pmorl` only: weight per preference pole (-{MAX_WEIGHT:g} to {MAX_WEIGHT:g}), "
        'e.g. {"expertise.elementary": 0.5, "style.friendly": 0.5}.',
    )

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(len(s) > 64 for s in stops):
            raise ValueError("stop: at most 4 strings of at most 64 characters")
        return stops


class PreferenceOptions(BaseModel):
    """Preference-aware answering (sent in `extra_body`): sample `candidates` answers and return the
    one the preference critic ranks highest for the user's stated preferences in memory."""

    model_config = ConfigDict(strict=True, extra="forbid")

    apply: bool = True
    candidates: int | None = Field(
        default=None, ge=1, le=MAX_CANDIDATES, description="Answers sampled (default: the avatar's setting, else 4)."
    )
    avatar: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Models other than `avatar:NAME`: the avatar whose memory holds the user's preferences.",
    )


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_ITEMS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_LIMIT)
    preference_prompt: bool = Field(
        default=True,
        description="Models `soup` and `pmorl`: state the preferences in the system message, as in training.",
    )
    preferences: PreferenceOptions | None = Field(
        default=None,
        description='Preference-aware answering, e.g. {"candidates": 4, "apply": true}; the response\'s '
        "`preferences` field (in a stream: the final chunk) names the preferences applied.",
    )


class CompletionRequest(SamplingFields):
    prompt: str | list[str] = Field(max_length=MAX_ITEMS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> list[str]:
        prompts = [value] if isinstance(value, str) else value
        if not prompts or any(not p or len(p) > MAX_TEXT_CHARS for p in prompts):
            raise ValueError(f"prompt: 1 to {MAX_ITEMS} non-empty strings of at most {MAX_TEXT_CHARS} characters")
        return prompts


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > MAX_ITEMS or any(len(t) > MAX_TEXT_CHARS for t in texts):
            raise ValueError(f"input: 1 to {MAX_ITEMS} strings of at most {MAX_TEXT_CHARS} characters")
        return texts


class KeyRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    scope: str = Field(pattern=r"^(user|avatar:[A-Za-z0-9_.-]{1,64})$")
