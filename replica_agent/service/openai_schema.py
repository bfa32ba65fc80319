"""OpenAI request bodies for ``/v1/completions`` and ``/v1/chat/completions``, validated strictly (a
string where a number belongs is an error, as with OpenAI) and turned into a :class:`GenerateInput`.

Fields this agent cannot honour (several choices, stop strings, logprobs, tools, echo) are refused
with a 400 naming the field rather than silently ignored; unknown fields are ignored, like vLLM.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from replica_agent.service.backend import GenerateInput, InvalidRequestError

DEFAULT_COMPLETION_MAX_TOKENS = 16
DEFAULT_CHAT_MAX_TOKENS_CAP = 4096
INT32_MAX = 2**31 - 1  # token ids, counts and priorities travel as 32-bit protobuf integers


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    include_usage: bool = False


class _GenerateBody(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0, le=INT32_MAX)]] | None = None
    stop: str | list[str] | None = None
    priority: int | None = Field(default=None, ge=-INT32_MAX - 1, le=INT32_MAX)
    n: int | None = None
    user: str | None = None
    # vLLM's extension: each choice also carries the ids of the tokens it holds.
    return_token_ids: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> _GenerateBody:
        if self.n not in (None, 1):
            raise ValueError("n: only n=1 is supported (one choice per request)")
        if self.stop:
            raise ValueError("stop: stop strings are not supported; use stop_token_ids")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionBody(_GenerateBody):
    # A string, token ids, or a one-element list of either; normalised by the validator.
    prompt: str | list[int]
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    @field_validator("prompt", mode="plain")
    @classmethod
    def _one_prompt(cls, value: Any) -> str | list[int]:
        if isinstance(value, str):
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("must be a string or a non-empty list of token ids")
        if all(isinstance(item, (str, list)) for item in value):
            if len(value) > 1:
                raise ValueError("only one prompt per request")
            return cls._one_prompt(value[0])
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            if not all(0 <= item <= INT32_MAX for item in value):
                raise ValueError("token ids must be non-negative 32-bit integers")
            return list(value)
        raise ValueError("must be a string or a non-empty list of token ids")

    @model_validator(mode="after")
    def _completion_supported(self) -> CompletionBody:
        if self.echo:
            raise ValueError("echo: echoing the prompt is not supported")
        if self.suffix:
            raise ValueError("suffix: not supported")
        if self.logprobs is not None:
            raise ValueError("logprobs: not supported")
        if self.best_of not in (None, 1):
            raise ValueError("best_of: only best_of=1 is supported")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None

    @field_validator("content", mode="plain")
    @classmethod
    def _text(cls, value: Any) -> str:
        """A string, null, or a list of text parts (joined by newlines, as vLLM does)."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise ValueError("must be a string or a list of content parts")
        texts = []
        for part in value:
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            texts.append(part["text"])
        return "\n".join(texts)


class ChatBody(_GenerateBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @model_validator(mode="after")
    def _chat_supported(self) -> ChatBody:
        if self.logprobs:
            raise ValueError("logprobs: not supported")
        if self.tools:
            raise ValueError("tools: tool calling is not supported")
        return self

    @property
    def answer_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


Body = TypeVar("Body", CompletionBody, ChatBody)


def parse_body(kind: type[Body], raw: bytes) -> Body:
    """The validated body, or an :class:`InvalidRequestError` naming the first thing wrong."""
    try:
        return kind.model_validate_json(raw, strict=True)
    except ValidationError as error:
        raise _request_error(error) from None


def _request_error(error: ValidationError) -> InvalidRequestError:
    first = error.errors(include_url=False)[0]
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "json_invalid":
        return InvalidRequestError(
            f"the request body is not valid JSON: {message.removeprefix('Invalid JSON: ')}"
        )
    if first["type"] == "model_type" and not first["loc"]:
        return InvalidRequestError("the request body must be a JSON object")
    param = ".".join(str(part) for part in first["loc"]) or None
    if param is None and ": " in message:
        # Whole-body checks name their field first: "n: only n=1 is supported".
        param = message.split(": ", 1)[0]
        return InvalidRequestError(message, param)
    if first["type"] == "missing":
        return InvalidRequestError(f"{param} is required", param)
    return InvalidRequestError(f"{param}: {message}", param)


def to_generate_input(
    body: CompletionBody | ChatBody,
    *,
    request_id: str,
    model: str,
    max_tokens: int,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> GenerateInput:
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()
    if isinstance(body, ChatBody):
        messages = tuple((message.role, message.content) for message in body.messages)
    elif isinstance(body.prompt, str):
        prompt = body.prompt
    else:
        prompt_token_ids = tuple(body.prompt)
    return GenerateInput(
        request_id=request_id,
        model=model,
        max_tokens=max_tokens,
        prompt=prompt,
        messages=messages,
        prompt_token_ids=prompt_token_ids,
        ignore_eos=bool(body.ignore_eos),
        stop_token_ids=tuple(body.stop_token_ids or ()),
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        priority=body.priority or 0,
        traceparent=traceparent,
        tracestate=tracestate,
        user=body.user,
    )


def default_chat_max_tokens(max_model_len: int, prompt_tokens: int) -> int:
    """OpenAI-like: the rest of the context, capped; at least 1 so the prompt check speaks first."""
    return max(1, min(DEFAULT_CHAT_MAX_TOKENS_CAP, max_model_len - prompt_tokens))
