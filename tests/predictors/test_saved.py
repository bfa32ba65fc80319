from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predictors.base import OutputLengthPredictor, PredictorFeatures
from predictors.data import to_features
from predictors.evaluate import batch_estimates
from predictors.features import FeatureConfig
from predictors.learned import fit_predictor
from predictors.saved import FORMAT_VERSION, PredictorLoadError, load_predictor, read_metadata, save_predictor
from predictors.sklearn_model import BoostingConfig
from tests.predictors.synthetic import synthetic_rows

ROWS = synthetic_rows(prompts=40)
REQUESTS = [to_features(row) for row in ROWS]
LENGTHS = [row.output_tokens for row in ROWS]
GROUPS = [row.prompt_key for row in ROWS]
PROBES = [*REQUESTS[:10], PredictorFeatures("unseen-model", 30, 0, prompt_text="Write a long essay on rain")]

FAST = BoostingConfig(max_iter=40)


def trained(kind: str) -> OutputLengthPredictor:
    config = FeatureConfig(hash_features=1 << 10, svd_components=4)
    return fit_predictor(kind, REQUESTS, LENGTHS, GROUPS, seed=0, feature_config=config, boosting=FAST)


@pytest.mark.parametrize("kind", ["mean", "running_average", "length_regression", "sklearn"])
def test_save_then_load_gives_identical_predictions(tmp_path: Path, kind: str) -> None:
    model = trained(kind)
    save_predictor(model, tmp_path / kind, seed=4, training={"rows": len(ROWS)}, metrics={"kendall_tau": 0.5})
    loaded = load_predictor(tmp_path / kind)
    assert [loaded.predict(r) for r in PROBES] == [model.predict(r) for r in PROBES]
    np.testing.assert_array_equal(batch_estimates(loaded, PROBES), batch_estimates(model, PROBES))
    metadata = read_metadata(tmp_path / kind)
    assert metadata["kind"] == kind and metadata["seed"] == 4 and metadata["format_version"] == FORMAT_VERSION
    assert metadata["training"] == {"rows": len(ROWS)} and metadata["metrics"] == {"kendall_tau": 0.5}
    assert metadata["created_by"].startswith("fleetroute ")


def test_metrics_that_are_not_numbers_are_written_as_null(tmp_path: Path) -> None:
    save_predictor(trained("mean"), tmp_path, metrics={"tau": float("nan")})
    assert json.loads((tmp_path / "metadata.json").read_text())["metrics"] == {"tau": None}


def rewrite_metadata(directory: Path, **changes: object) -> None:
    path = directory / "metadata.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_a_newer_format_version_is_refused(tmp_path: Path) -> None:
    save_predictor(trained("mean"), tmp_path)
    rewrite_metadata(tmp_path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(PredictorLoadError, match=f"format version {FORMAT_VERSION + 1}, .* reads version 1"):
        load_predictor(tmp_path)


def test_an_unknown_kind_is_refused(tmp_path: Path) -> None:
    save_predictor(trained("mean"), tmp_path)
    rewrite_metadata(tmp_path, kind="crystal-ball")
    with pytest.raises(PredictorLoadError, match="unknown predictor kind 'crystal-ball'"):
        load_predictor(tmp_path)


def test_missing_directory_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(PredictorLoadError, match="no predictor directory"):
        load_predictor(tmp_path / "absent")
    with pytest.raises(PredictorLoadError, match=r"missing metadata\.json"):
        load_predictor(tmp_path)
    save_predictor(trained("sklearn"), tmp_path)
    (tmp_path / "arrays.safetensors").unlink()
    with pytest.raises(PredictorLoadError, match=r"missing arrays\.safetensors"):
        load_predictor(tmp_path)


def test_damaged_files_are_one_line_errors(tmp_path: Path) -> None:
    save_predictor(trained("sklearn"), tmp_path)
    (tmp_path / "arrays.safetensors").write_bytes(b"garbage")
    with pytest.raises(PredictorLoadError, match="damaged") as error:
        load_predictor(tmp_path)
    assert "\n" not in str(error.value)
    (tmp_path / "params.json").write_text("{")
    with pytest.raises(PredictorLoadError, match=r"params\.json is not valid JSON"):
        load_predictor(tmp_path)


def test_params_that_do_not_fit_the_kind_are_refused(tmp_path: Path) -> None:
    save_predictor(trained("length_regression"), tmp_path)
    (tmp_path / "params.json").write_text("{}")
    with pytest.raises(PredictorLoadError, match="damaged length_regression predictor: missing 'models'"):
        load_predictor(tmp_path)


def test_only_known_predictors_can_be_saved(tmp_path: Path) -> None:
    from predictors.running_average import RunningAveragePredictor

    with pytest.raises(ValueError, match="cannot save a RunningAveragePredictor"):
        save_predictor(RunningAveragePredictor(), tmp_path)
