"""The built-in engine as a ``Backend``: validation, tokenization and text, over the real-time loop."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from protos.snapshot import ReplicaSnapshot
from protos.text import Tokenizer, render_chat
from replica_agent.engine.request import RequestSpec, SamplingParams
from replica_agent.executors.output_lengths import LengthScriptedExecutor
from replica_agent.service.backend import (
    AgentInfo,
    DrainingError,
    GenerateEvent,
    GenerateInput,
    InvalidRequestError,
    ModelNotFoundError,
    Usage,
)
from replica_agent.service.loop import EngineLoop


class BuiltinBackend:
    def __init__(
        self,
        loop: EngineLoop,
        tokenizer: Tokenizer,
        info: AgentInfo,
        length_script: LengthScriptedExecutor | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.loop = loop
        self.tokenizer = tokenizer
        self._info = info
        self.length_script = length_script
        self._wall_clock = wall_clock

    @property
    def info(self) -> AgentInfo:
        return self._info

    @property
    def draining(self) -> bool:
        return self.loop.engine.draining

    async def start(self) -> None:
        await self.loop.start()

    async def stop(self, drain_timeout_s: float) -> None:
        await self.loop.drain(drain_timeout_s)
        await self.loop.close()

    async def abort(self, request_id: str) -> bool:
        return self.loop.abort(request_id)

    def latest_snapshot(self) -> ReplicaSnapshot:
        return self.loop.hub.latest

    def watch_snapshots(self, interval_s: float | None = None) -> AsyncIterator[ReplicaSnapshot]:
        return self.loop.hub.watch(interval_s or self.loop.snapshot_interval_s)

    # -- generation ---------------------------------------------------------------------------
    def prepare(self, request: GenerateInput) -> RequestSpec:
        """The engine request for ``request``, or an :class:`AgentError` saying what is wrong."""
        if request.model and not self._info.serves(request.model):
            raise ModelNotFoundError(
                f"model {request.model!r} is not served here (serving {self._info.model!r})"
            )
        if self.draining:
            raise DrainingError("the replica is draining and admits no new requests")
        prompt = self._prompt_tokens(request)
        limit = self.loop.engine.max_seq_tokens
        if len(prompt) >= limit:
            raise InvalidRequestError(
                f"the prompt has {len(prompt)} tokens, over this model's maximum context length of "
                f"{limit} tokens less one for the answer",
                param="prompt",
            )
        if request.max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be at least 1, got {request.max_tokens}", "max_tokens"
            )
        if len(prompt) + request.max_tokens > limit:
            raise InvalidRequestError(
                f"this model's maximum context length is {limit} tokens; the request asks for "
                f"{len(prompt) + request.max_tokens} ({len(prompt)} in the prompt, {request.max_tokens} "
                "for the answer). Shorten the prompt or lower max_tokens.",
                param="max_tokens",
            )
        self._check_sampling(request)
        return RequestSpec(
            request_id=request.request_id,
            prompt_token_ids=tuple(prompt),
            arrival_time=self.loop.engine_clock(),
            params=SamplingParams(
                max_tokens=request.max_tokens,
                ignore_eos=request.ignore_eos,
                stop_token_ids=request.stop_token_ids,
            ),
            priority=request.priority,
            predicted_output_tokens=request.predicted_output_tokens,
        )

    def _prompt_tokens(self, request: GenerateInput) -> list[int]:
        inputs = sum((request.prompt is not None, bool(request.messages), bool(request.prompt_token_ids)))
        if inputs != 1:
            raise InvalidRequestError("give exactly one of prompt, messages or prompt token ids", "prompt")
        if request.prompt_token_ids:
            vocab = self.tokenizer.vocab_size
            bad = next((t for t in request.prompt_token_ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequestError(f"prompt token id {bad} is outside the vocabulary [0, {vocab})")
            return list(request.prompt_token_ids)
        text = render_chat(request.messages) if request.messages else (request.prompt or "")
        tokens = self.tokenizer.encode(text)
        if not tokens:
            raise InvalidRequestError(
                "the prompt is empty", "prompt" if request.prompt is not None else "messages"
            )
        return tokens

    def _check_sampling(self, request: GenerateInput) -> None:
        if request.temperature is not None and not 0.0 <= request.temperature <= 2.0:
            raise InvalidRequestError(
                f"temperature must be in [0, 2], got {request.temperature}", "temperature"
            )
        if request.top_p is not None and not 0.0 < request.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {request.top_p}", "top_p")
        vocab = self.tokenizer.vocab_size
        bad = next((t for t in request.stop_token_ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"stop token id {bad} is outside the vocabulary [0, {vocab})")

    async def generate(self, request: GenerateInput) -> AsyncIterator[GenerateEvent]:
        spec = self.prepare(request)
        arrived = self._wall_clock()
        if self.length_script is not None:
            self.length_script.expect(
                spec.request_id, len(spec.prompt_token_ids), request.max_tokens, request.ignore_eos
            )
        try:
            stream = self.loop.submit(spec)
        except ValueError as error:
            self._forget(spec.request_id)
            raise InvalidRequestError(str(error)) from None
        except RuntimeError as error:
            self._forget(spec.request_id)
            raise DrainingError(str(error)) from None
        completed = False
        produced: list[int] = []
        try:
            async for batch in stream:
                text = []
                for token in batch.token_ids:
                    text.append(self.tokenizer.decode_token(token, produced))
                    produced.append(token)
                final = batch.final
                usage = None
                if final is not None:
                    usage = Usage(final.num_prompt_tokens, final.num_output_tokens, final.num_cached_tokens)
                yield GenerateEvent(
                    request_id=spec.request_id,
                    token_ids=batch.token_ids,
                    text="".join(text),
                    time=batch.produced_at,
                    elapsed_s=max(0.0, batch.produced_at - arrived),
                    finished=final is not None,
                    finish_reason=final.finish_reason if final is not None else None,
                    usage=usage,
                )
            completed = True
        finally:
            if not completed:
                self.loop.abort(spec.request_id)

    def _forget(self, request_id: str) -> None:
        if self.length_script is not None:
            self.length_script.release(request_id)
