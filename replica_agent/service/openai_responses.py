"""OpenAI response bodies: completions and chat completions, whole or as stream chunks, model lists
and error objects, as plain dicts ready for JSON."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replica_agent.service.backend import AgentInfo, GenerateEvent, Usage

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Answer:
    """What every response of one request shares."""

    id: str
    created: int
    model: str
    chat: bool
    include_usage: bool = False
    return_token_ids: bool = False

    @property
    def object(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    def _envelope(self, obj: str, choices: list[JsonObject]) -> JsonObject:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _choice(
        self, text: str, token_ids: Sequence[int], finish_reason: str | None, delta: bool
    ) -> JsonObject:
        choice: JsonObject = {"index": 0}
        if not self.chat:
            choice["text"] = text
        elif delta:
            choice["delta"] = {"content": text} if text else {}
        else:
            choice["message"] = {"role": "assistant", "content": text}
        choice["logprobs"] = None
        choice["finish_reason"] = finish_reason
        if self.return_token_ids:
            choice["token_ids"] = list(token_ids)
        return choice

    def whole(
        self, text: str, token_ids: Sequence[int], finish_reason: str | None, usage: Usage
    ) -> JsonObject:
        body = self._envelope(self.object, [self._choice(text, token_ids, finish_reason, delta=False)])
        body["usage"] = usage_json(usage)
        return body

    def chunk(self, event: GenerateEvent) -> JsonObject:
        body = self._envelope(
            self.chunk_object,
            [
                self._choice(
                    event.text, event.token_ids, event.finish_reason if event.finished else None, True
                )
            ],
        )
        if self.include_usage:
            body["usage"] = None
        return body

    def role_chunk(self) -> JsonObject:
        """A chat stream's first chunk: the assistant's role, no content yet."""
        choice = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        body = self._envelope(self.chunk_object, [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, usage: Usage) -> JsonObject:
        """The last chunk when ``stream_options.include_usage`` is set: no choices, the usage."""
        body = self._envelope(self.chunk_object, [])
        body["usage"] = usage_json(usage)
        return body


def usage_json(usage: Usage) -> JsonObject:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def models_json(info: AgentInfo, created: int) -> JsonObject:
    names = dict.fromkeys((info.model, *info.served_model_names))
    return {
        "object": "list",
        "data": [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "fleetroute",
                "root": info.model,
                "parent": None,
                "max_model_len": info.max_model_len,
            }
            for name in names
        ],
    }


def error_json(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> JsonObject:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
