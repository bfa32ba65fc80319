"""Text ↔ tokens, shared by routers and replicas so both hash the same blocks for the same prompt.

Two tokenizers:

* :class:`ApproxTokenizer` — no model files needed. Splits text into pieces of at most four
  characters (words are cut into 4-character pieces, punctuation stands alone), the chars/4 rule of
  thumb made deterministic, and maps each piece to an id with a seeded xxhash. Equal text prefixes give
  equal token prefixes, so prefix caching and prefix routing behave as with a real tokenizer. Ids
  cannot be turned back into the prompt; decoding produces deterministic filler words, which is what a
  cost-model or random-weight replica should say.
* :class:`HFTokenizer` — a real ``tokenizer.json`` through the ``tokenizers`` library.

Chat messages become one prompt through :func:`render_chat` (a fixed, documented template).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import xxhash

_PIECE = re.compile(r"\s*(?:\w{1,4}|[^\w\s])|\s+")

FILLER_WORDS = (
    "the", "model", "replica", "token", "cache", "block", "answer", "fleet", "router", "batch",
    "prefill", "decode", "queue", "latency", "memory", "request", "stream", "engine", "policy", "load",
    "of", "and", "to", "in", "is", "for", "on", "with", "as", "by", "that", "this",
)  # fmt: skip


class Tokenizer(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode_token(self, token_id: int, previous: Sequence[int]) -> str:
        """Text that ``token_id`` adds after the tokens ``previous`` of the same output."""
        ...


@dataclass(frozen=True)
class ApproxTokenizer:
    """Deterministic 4-character pieces hashed into ``[reserved, vocab_size)``.

    Ids below ``reserved`` are left for special tokens (EOS is id 2, as in Llama vocabularies).
    """

    vocab_size: int = 32000
    seed: int = 0
    reserved: int = 16
    eos_token_id: int | None = 2
    name: str = "approx"

    def __post_init__(self) -> None:
        if self.vocab_size <= self.reserved:
            raise ValueError(f"vocab_size {self.vocab_size} has no ids above the {self.reserved} reserved")

    def pieces(self, text: str) -> list[str]:
        return _PIECE.findall(text)

    def encode(self, text: str) -> list[int]:
        span = self.vocab_size - self.reserved
        return [
            self.reserved + int(xxhash.xxh3_64_intdigest(piece.encode(), seed=self.seed)) % span
            for piece in self.pieces(text)
        ]

    def count(self, text: str) -> int:
        return len(self.pieces(text))

    def decode_token(self, token_id: int, previous: Sequence[int]) -> str:
        if token_id == self.eos_token_id:
            return ""
        word = FILLER_WORDS[token_id % len(FILLER_WORDS)]
        return word if not previous else f" {word}"


class HFTokenizer:
    """A Hugging Face ``tokenizer.json`` (no network: the file must be local)."""

    def __init__(self, path: str | Path, eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        if not file.is_file():
            raise ValueError(f"no tokenizer.json at {path}")
        self._tokenizer = _Tokenizer.from_file(str(file))
        self.name = file.parent.name or file.name
        self.vocab_size = int(self._tokenizer.get_vocab_size())
        self.eos_token_id = self._find_eos(eos_token)

    def _find_eos(self, eos_token: str | None) -> int | None:
        candidates = [eos_token] if eos_token else ["</s>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>"]
        for token in candidates:
            token_id = self._tokenizer.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return None

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode_token(self, token_id: int, previous: Sequence[int]) -> str:
        # Decode with a little left context so merges and leading spaces come out right.
        context = list(previous[-6:])
        before = self._tokenizer.decode(context) if context else ""
        after = self._tokenizer.decode([*context, token_id])
        return after[len(before) :] if after.startswith(before) else after


def render_chat(messages: Sequence[tuple[str, str]]) -> str:
    """One prompt from (role, content) pairs, ending where the assistant's answer begins."""
    parts = [f"<|{role}|>\n{content}\n" for role, content in messages]
    return "".join(parts) + "<|assistant|>\n"


def load_tokenizer(spec: str | None, vocab_size: int = 32000, seed: int = 0) -> Tokenizer:
    """``None``/"approx" for the approximate tokenizer, otherwise a tokenizer.json file or directory."""
    if spec in (None, "", "approx"):
        return ApproxTokenizer(vocab_size=vocab_size, seed=seed)
    return HFTokenizer(spec)
