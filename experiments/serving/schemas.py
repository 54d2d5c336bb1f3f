"""Request bodies of the OpenAI-shaped endpoints, validated strictly: an unknown field, a wrong
type or a value out of range is refused with a 400 naming the field (``app.request_error``).

Fields as in the OpenAI API (``model``, ``prompt``/``messages``, ``max_tokens``, ``temperature``,
``top_p``, ``stop``, ``seed``, ``n``, ``stream``, ``stream_options``, ``user``) plus three
extensions other servers have too: ``top_k``, ``truncate`` ("left": cut a prompt longer than the
context from the left instead of refusing it) and ``ignore_eos`` (generate ``max_tokens`` tokens;
benchmarks).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datamodules.jsonl import format_record

MAX_STOP = 4  # as OpenAI


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
    include_usage: bool = False


class Sampling(Strict):
    """What both endpoints share. Limits that depend on the server (``max_tokens``, ``n``, prompt
    size) are checked by the engine against its config."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None
    n: Annotated[int, Field(ge=1)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    truncate: Literal["left"] | None = None
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(Sampling):
    prompt: str


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None  # the newer name of max_tokens

    @field_validator("messages")
    @classmethod
    def _last_is_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must have role 'user'")
        return messages

    @model_validator(mode="after")
    def _max_completion_tokens(self) -> ChatRequest:
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


# The next turn of a rendered chat starts with this: a chat answer stops before it.
CHAT_TURN = "\n\n### Instruction:"


def render_chat(messages: list[ChatMessage]) -> str:
    """The conversation in the Alpaca format the platform trains on (``format_record``): one
    ``### Instruction:`` / ``### Response:`` pair per user turn, system messages as the first
    turn's ``### Input:``, ending with an open ``### Response:\\n`` for the model to complete."""
    system = "\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.role == "user":
            turns.append({"instruction": m.content, "input": "" if turns else system, "output": ""})
        elif m.role == "assistant" and turns:
            turns[-1]["output"] += m.content
    return "\n\n".join(format_record(t) for t in turns)
