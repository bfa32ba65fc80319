import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.stats import kendalltau

from predictors.torch_heads import (
    LENGTH_BINS,
    MODEL_FILE,
    TorchLengthModel,
    TrainConfig,
    bin_index,
    listmle_loss,
    train_dist_model,
    train_rank_model,
)

EPOCHS = 12


def synthetic(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Log length linear in the features plus noise: lengths from a few tokens to a few thousand."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 16)).astype(np.float32)
    weights = np.linspace(-1.0, 1.0, 16) / 2.0
    log_length = 4.8 + x @ weights + 0.3 * rng.normal(size=rows)
    return x, np.maximum(1.0, np.round(np.exp(log_length)))


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = synthetic(1500, seed=7)
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.fixture(scope="module")
def rank_model(data: tuple[np.ndarray, ...]) -> TorchLengthModel:
    x, y, _, _ = data
    return train_rank_model(x, y, seed=3, epochs=EPOCHS)


@pytest.fixture(scope="module")
def dist_model(data: tuple[np.ndarray, ...]) -> TorchLengthModel:
    x, y, _, _ = data
    return train_dist_model(x, y, seed=3, epochs=EPOCHS)


def test_listmle_loss_matches_the_plackett_luce_likelihood_by_hand() -> None:
    scores = torch.log(torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]]))
    in_order = torch.tensor([[30.0, 20.0, 10.0]])
    # true order 1, 2, 3: -log(3/6) - log(2/3) - log(1/1) = log 3
    assert listmle_loss(scores[:1], in_order).item() == pytest.approx(math.log(3.0))
    # true order 3, 2, 1: -log(1/6) - log(2/5) - log(3/3) = log 15
    reversed_order = torch.tensor([[10.0, 20.0, 30.0]])
    assert listmle_loss(scores[:1], reversed_order).item() == pytest.approx(math.log(15.0))
    both = torch.cat([in_order, reversed_order])
    assert listmle_loss(scores, both).item() == pytest.approx((math.log(3.0) + math.log(15.0)) / 2)
    with pytest.raises(ValueError, match="lists, items"):
        listmle_loss(scores, in_order)


def test_rank_model_orders_held_out_requests_and_beats_a_constant(
    rank_model: TorchLengthModel, data: tuple[np.ndarray, ...]
) -> None:
    _, y, x_test, y_test = data
    predicted = rank_model.predict(x_test)
    tau = kendalltau(rank_model.predict_scores(x_test), y_test).statistic
    constant_tau = kendalltau(np.full(len(y_test), np.median(y)), y_test).statistic
    assert tau > 0.5
    assert not tau <= np.nan_to_num(constant_tau)
    model_error = np.abs(np.log(predicted[:, 1]) - np.log(y_test)).mean()
    constant_error = np.abs(np.log(np.median(y)) - np.log(y_test)).mean()
    assert model_error < 0.6 * constant_error
    assert 0.75 <= (y_test <= predicted[:, 2]).mean() <= 0.98  # p90 calibrated on held-out rows


def test_dist_model_gives_distributions_and_ordered_quantiles(
    dist_model: TorchLengthModel, data: tuple[np.ndarray, ...]
) -> None:
    _, _, x_test, y_test = data
    bins = dist_model.predict_bins(x_test)
    predicted = dist_model.predict(x_test)
    assert bins.shape == (len(x_test), len(LENGTH_BINS))
    np.testing.assert_allclose(bins.sum(axis=1), 1.0, atol=1e-9)
    assert (bins >= 0).all()
    assert (predicted[:, 1] <= predicted[:, 2]).all()
    assert (predicted > 0).all()
    assert kendalltau(predicted[:, 0], y_test).statistic > 0.5


def test_rank_model_bins_agree_with_its_quantiles(
    rank_model: TorchLengthModel, data: tuple[np.ndarray, ...]
) -> None:
    _, _, x_test, _ = data
    bins = rank_model.predict_bins(x_test)
    predicted = rank_model.predict(x_test)
    np.testing.assert_allclose(bins.sum(axis=1), 1.0, atol=1e-9)
    assert (bins >= 0).all()
    below_p50 = np.array(
        [row[: bin_index(np.array([p50]))[0]].sum() for row, p50 in zip(bins, predicted[:, 1], strict=True)]
    )
    assert (below_p50 <= 0.5 + 1e-9).all()


def test_quantiles_and_mean_from_bins_follow_the_log_uniform_rule() -> None:
    x, y = synthetic(200, seed=1)
    model = train_dist_model(x, y, seed=0, epochs=1)
    logits = np.full(len(LENGTH_BINS), -1e9)
    logits[LENGTH_BINS.index(91)] = 0.0  # all mass in (64, 91]
    model._layers[-1] = (np.zeros_like(model._layers[-1][0]), logits)
    mean, p50, p90 = model.predict(x[:1])[0]
    assert mean == pytest.approx((91 - 64) / math.log(91 / 64))
    assert p50 == pytest.approx(math.sqrt(64 * 91))
    assert p90 == pytest.approx(math.exp(math.log(64) + 0.9 * math.log(91 / 64)))


@pytest.mark.parametrize("kind", ["rank", "dist"])
def test_save_and_load_give_identical_predictions(
    kind: str,
    rank_model: TorchLengthModel,
    dist_model: TorchLengthModel,
    data: tuple[np.ndarray, ...],
    tmp_path: Path,
) -> None:
    model = rank_model if kind == "rank" else dist_model
    _, _, x_test, _ = data
    model.save(tmp_path)
    loaded = TorchLengthModel.load(tmp_path)
    assert loaded.kind == kind and loaded.hidden == model.hidden
    np.testing.assert_array_equal(loaded.predict(x_test), model.predict(x_test))
    np.testing.assert_array_equal(loaded.predict_bins(x_test[:3]), model.predict_bins(x_test[:3]))


def test_one_row_numpy_path_matches_the_torch_batch_path(
    dist_model: TorchLengthModel, rank_model: TorchLengthModel
) -> None:
    x, _ = synthetic(40, seed=5)
    for model in (dist_model, rank_model):
        batch = model.predict(x)
        singles = np.vstack([model.predict(x[i : i + 1]) for i in range(len(x))])
        np.testing.assert_allclose(singles, batch, rtol=1e-4)


def test_estimate_is_a_length_estimate_with_bins(rank_model: TorchLengthModel) -> None:
    x, _ = synthetic(1, seed=9)
    estimate = rank_model.estimate(x[0])
    assert [bound for bound, _ in estimate.bins] == list(LENGTH_BINS)
    assert sum(p for _, p in estimate.bins) == pytest.approx(1.0)
    assert estimate.p50 <= estimate.p90
    assert estimate.mean == pytest.approx(rank_model.predict(x)[0, 0])


def test_training_is_deterministic_and_leaves_torch_settings_alone(tmp_path: Path) -> None:
    x, y = synthetic(300, seed=2)
    threads, rng_state = torch.get_num_threads(), torch.get_rng_state()
    calls: list[tuple[int, int]] = []
    first = train_rank_model(
        x, y, seed=11, epochs=3, progress=lambda done, total: calls.append((done, total))
    )
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng_state)
    assert calls[-1][0] == calls[-1][1] and [done for done, _ in calls] == list(range(1, len(calls) + 1))
    second = train_rank_model(x, y, seed=11, epochs=3)
    other = train_rank_model(x, y, seed=12, epochs=3)
    for name, model in (("a", first), ("b", second), ("c", other)):
        model.save(tmp_path / name)
    a, b, c = (load_file(tmp_path / name / MODEL_FILE) for name in "abc")
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a if key in c and a[key].shape == c[key].shape)
    dist_a = train_dist_model(x, y, seed=4, epochs=2).predict(x)
    np.testing.assert_array_equal(dist_a, train_dist_model(x, y, seed=4, epochs=2).predict(x))


def test_groups_keep_each_group_on_one_side_of_the_calibration_split() -> None:
    x, y = synthetic(400, seed=4)
    groups = np.repeat(np.arange(40), 10)
    model = train_rank_model(x, y, seed=0, epochs=2, groups=groups, config=TrainConfig(hidden=(16,)))
    assert model.hidden == (16,)
    with pytest.raises(ValueError, match="groups"):
        train_rank_model(x, y, seed=0, epochs=1, groups=groups[:10])


def test_bad_inputs_are_refused_with_a_message(dist_model: TorchLengthModel) -> None:
    x, y = synthetic(100, seed=3)
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        dist_model.predict(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 1 token"):
        train_dist_model(x, np.zeros(len(y)), seed=0, epochs=1)
    with pytest.raises(ValueError, match="finite"):
        train_rank_model(np.full_like(x, np.nan), y, seed=0, epochs=1)
    with pytest.raises(ValueError, match="at least 20"):
        train_rank_model(x[:5], y[:5], seed=0, epochs=1)


def test_load_refuses_missing_corrupt_and_inconsistent_files(
    dist_model: TorchLengthModel, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no length model"):
        TorchLengthModel.load(tmp_path / "missing")
    dist_model.save(tmp_path)
    path = tmp_path / MODEL_FILE
    good = path.read_bytes()
    tensors = {name: tensor.clone() for name, tensor in load_file(path).items()}
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        TorchLengthModel.load(tmp_path)
    metadata = {
        "format": "fleetroute.torch_length_model/1",
        "kind": "dist",
        "input_dim": "16",
        "hidden": "[128, 64]",
    }
    bins = str(list(LENGTH_BINS))
    save_file(tensors, str(path), metadata={**metadata, "length_bins": bins.replace("16384", "8192")})
    with pytest.raises(ValueError, match="other length bins"):
        TorchLengthModel.load(tmp_path)
    wrong = {**tensors, "layers.0.weight": torch.zeros(128, 17)}
    save_file(wrong, str(path), metadata={**metadata, "length_bins": bins})
    with pytest.raises(ValueError, match="consistent dist model"):
        TorchLengthModel.load(tmp_path)
    save_file(tensors, str(path), metadata={**metadata, "length_bins": bins, "kind": "rank"})
    with pytest.raises(ValueError, match="consistent rank model"):
        TorchLengthModel.load(tmp_path)
