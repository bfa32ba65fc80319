"""Predictor directories: ``save_predictor`` writes one, ``load_predictor`` reads it back.

A directory holds

* ``metadata.json`` — format version, kind, seed, training-data summary, held-out metrics and the
  fleetroute version that wrote it;
* ``params.json`` — the model's JSON parameters (feature config and learned vocabulary included);
* ``arrays.safetensors`` — its numeric arrays (feature projection, tree tables, intercepts);
* ``torch/`` — the torch weights of the ``torch-rank``, ``torch-dist`` and ``embedding`` kinds, saved by
  ``predictors.torch_heads`` with safetensors.

Nothing is pickled: the scikit-learn kind stores its fitted trees as plain arrays. Loading checks the
format version and the kind and turns every problem into one :class:`PredictorLoadError` line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fleetroute import __version__
from predictors.base import OutputLengthPredictor
from predictors.baselines import GlobalMeanPredictor, GroupedRunningAverage, LengthRegression
from predictors.features import FeatureExtractor
from predictors.learned import EncodedFeatures, LearnedPredictor, VectorModel
from predictors.sklearn_model import BoostedLengthModel

FORMAT_VERSION = 1
KINDS = ("mean", "running_average", "length_regression", "sklearn", "torch-rank", "torch-dist", "embedding")
TORCH_KINDS = ("torch-rank", "torch-dist")
METADATA_FILE = "metadata.json"
PARAMS_FILE = "params.json"
ARRAYS_FILE = "arrays.safetensors"
TORCH_DIR = "torch"

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "PredictorLoadError",
    "PredictorMetadata",
    "load_predictor",
    "read_metadata",
    "save_predictor",
]


class PredictorLoadError(ValueError):
    """A predictor directory that cannot be used; the message is one line naming the problem."""


SavablePredictor = GlobalMeanPredictor | GroupedRunningAverage | LengthRegression | LearnedPredictor
_BASELINES: dict[str, Any] = {
    "mean": GlobalMeanPredictor,
    "running_average": GroupedRunningAverage,
    "length_regression": LengthRegression,
}


@dataclass(frozen=True, slots=True)
class PredictorMetadata:
    kind: str
    seed: int = 0
    training: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    created_by: str = f"fleetroute {__version__}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "kind": self.kind,
            "seed": self.seed,
            "created_by": self.created_by,
            "training": _finite(dict(self.training)),
            "metrics": _finite(dict(self.metrics)),
        }


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


def _contiguous(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(array) for name, array in arrays.items()}


def save_predictor(
    model: OutputLengthPredictor,
    directory: Path,
    *,
    seed: int = 0,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` into ``directory`` (created if needed; our files in it are replaced).
    ``ValueError`` if ``model`` is not a kind this module can save."""
    from safetensors.numpy import save_file

    if not isinstance(model, SavablePredictor):
        raise ValueError(f"cannot save a {type(model).__name__}")
    directory.mkdir(parents=True, exist_ok=True)
    params, arrays = _state_of(model, directory)
    save_file(_contiguous(arrays), str(directory / ARRAYS_FILE))
    (directory / PARAMS_FILE).write_text(json.dumps(_finite(params), indent=1, sort_keys=True) + "\n")
    metadata = PredictorMetadata(model.kind, seed, training or {}, metrics or {})
    (directory / METADATA_FILE).write_text(json.dumps(metadata.to_json(), indent=2, sort_keys=True) + "\n")
    return directory


def _state_of(model: SavablePredictor, directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not isinstance(model, LearnedPredictor):
        return model.to_state()
    if model.kind not in KINDS[3:]:
        raise ValueError(f"cannot save a learned predictor of kind {model.kind!r}")
    source = model.features
    if isinstance(source, EncodedFeatures):
        dense = source.dense
        encoder_dir = str(source.encoder_dir) if source.encoder_dir is not None else None
    elif isinstance(source, FeatureExtractor):
        dense, encoder_dir = source, None
    else:
        raise ValueError(f"cannot save features of type {type(source).__name__}")
    feature_params, feature_arrays = dense.to_state()
    params: dict[str, Any] = {"features": feature_params, "bin_bounds": list(model.bin_bounds)}
    arrays = {f"features.{name}": array for name, array in feature_arrays.items()}
    if model.kind == "embedding":
        params["encoder_dir"] = encoder_dir
    if isinstance(model.model, BoostedLengthModel):
        params["head"] = "sklearn"
        model_params, model_arrays = model.model.to_state()
        params["model"] = model_params
        arrays.update({f"model.{name}": array for name, array in model_arrays.items()})
    else:
        params["head"] = "torch"
        saver = getattr(model.model, "save", None)
        if saver is None:
            raise ValueError(f"{type(model.model).__name__} cannot be saved")
        saver(directory / TORCH_DIR)
    return params, arrays


def read_metadata(directory: Path) -> dict[str, Any]:
    """``metadata.json`` of a predictor directory, checked for format version and kind."""
    if not directory.is_dir():
        raise PredictorLoadError(f"no predictor directory at {directory}")
    metadata = _read_json(directory, METADATA_FILE)
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise PredictorLoadError(
            f"{directory}: predictor format version {version!r}, "
            f"this fleetroute reads version {FORMAT_VERSION}"
        )
    kind = metadata.get("kind")
    if kind not in KINDS:
        raise PredictorLoadError(f"{directory}: unknown predictor kind {kind!r} (known: {', '.join(KINDS)})")
    return metadata


def _read_json(directory: Path, name: str) -> dict[str, Any]:
    path = directory / name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PredictorLoadError(f"{directory}: missing {name}") from None
    except OSError as error:
        raise PredictorLoadError(f"{directory}: cannot read {name}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PredictorLoadError(f"{directory}: {name} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise PredictorLoadError(f"{directory}: {name} must hold a JSON object")
    return data


def _read_arrays(directory: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = directory / ARRAYS_FILE
    if not path.is_file():
        raise PredictorLoadError(f"{directory}: missing {ARRAYS_FILE}")
    try:
        return dict(load_file(str(path)))
    except Exception as error:  # safetensors raises its own error types for a damaged file
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        raise PredictorLoadError(f"{directory}: {ARRAYS_FILE} is damaged: {first_line}") from None


def load_predictor(directory: Path) -> OutputLengthPredictor:
    """The predictor saved in ``directory``; :class:`PredictorLoadError` (one line) if it cannot be used."""
    directory = Path(directory)
    kind = str(read_metadata(directory)["kind"])
    params = _read_json(directory, PARAMS_FILE)
    arrays = _read_arrays(directory)
    try:
        if kind in _BASELINES:
            baseline: OutputLengthPredictor = _BASELINES[kind].from_state(params, arrays)
            return baseline
        return _load_learned(kind, directory, params, arrays)
    except PredictorLoadError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        detail = f"missing {error.args[0]!r}" if isinstance(error, KeyError) else str(error)
        raise PredictorLoadError(f"{directory}: damaged {kind} predictor: {detail}") from None


def _load_learned(
    kind: str, directory: Path, params: dict[str, Any], arrays: dict[str, np.ndarray]
) -> LearnedPredictor:
    prefix = "features."
    dense = FeatureExtractor.from_state(
        params["features"], {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}
    )
    model: VectorModel
    if params["head"] == "sklearn":
        prefix = "model."
        model = BoostedLengthModel.from_state(
            params["model"], {name[len(prefix) :]: a for name, a in arrays.items() if name.startswith(prefix)}
        )
    elif params["head"] == "torch":
        model = _load_torch_model(directory)
    else:
        raise ValueError(f"unknown head {params['head']!r}")
    features: FeatureExtractor | EncodedFeatures = dense
    if kind == "embedding":
        features = _encoded_features(dense, params.get("encoder_dir"), directory)
    bounds = tuple(int(bound) for bound in params["bin_bounds"])
    return LearnedPredictor(kind, features, model, bounds)


def _load_torch_model(directory: Path) -> VectorModel:
    if not (directory / TORCH_DIR).is_dir():
        raise PredictorLoadError(f"{directory}: missing {TORCH_DIR}/")
    try:
        from predictors.torch_heads import TorchLengthModel
    except ImportError as error:
        raise PredictorLoadError(f"{directory}: torch models are unavailable ({error})") from None
    model: VectorModel = TorchLengthModel.load(directory / TORCH_DIR)
    return model


def _encoded_features(dense: FeatureExtractor, encoder_dir: str | None, directory: Path) -> EncodedFeatures:
    try:
        from predictors.embedding import EmbeddingUnavailable, SentenceEncoder
    except ImportError as error:
        raise PredictorLoadError(f"{directory}: sentence embeddings are unavailable ({error})") from None
    path = Path(encoder_dir) if encoder_dir else None
    try:
        encoder = SentenceEncoder(path)
    except EmbeddingUnavailable as error:
        raise PredictorLoadError(f"{directory}: sentence embeddings are unavailable ({error})") from None
    return EncodedFeatures(encoder, dense, path)
