"""Output-length models in torch: a ListMLE ranking head and a length-bin distribution head.

Both share one trunk: inputs standardised with the training means and deviations (kept in the
weights), then a small ReLU MLP.

* The **rank** head gives one score per request, trained with the ListMLE loss on random lists of
  requests so that longer answers score higher. Scores become lengths by isotonic regression from
  score to log length, fitted on calibration rows held out of training; the calibration residuals
  in log space (kept as 101 quantiles) give p50, p90, the mean and the bin probabilities.
* The **dist** head gives a softmax over ``LENGTH_BINS``, trained with cross-entropy on targets
  smoothed toward the neighbouring bins; mean, p50 and p90 come from that distribution.

Bins: bin ``i`` holds lengths in ``(LENGTH_BINS[i-1], LENGTH_BINS[i]]`` (the first from 0 tokens;
the last holds everything above 4096, treated as at most 16384). Within a bin a length is taken as
log-uniform between its bounds (the first bin's lower bound taken as 1 token), so a bin's mean is
``(b - a) / ln(b / a)``, the distribution's mean is the probability-weighted sum of those, and a
quantile ``q`` lies in the first bin whose cumulative probability reaches ``q``, interpolated in log
length by how far into that bin's probability ``q`` falls.

Inference uses torch under ``inference_mode``; a few rows go through numpy with the same weights,
which is several times faster for one request. Weights are saved with safetensors. Torch is imported
only when a model is built, trained or loaded (importing it also imports asyncio, which the pure
core keeps out of its import graph).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from predictors.base import LengthEstimate

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "LENGTH_BINS",
    "Progress",
    "TorchLengthModel",
    "TrainConfig",
    "bin_index",
    "listmle_loss",
    "train_dist_model",
    "train_rank_model",
]

LENGTH_BINS: tuple[int, ...] = (
    8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048, 2896, 4096, 16384,
)  # fmt: skip
MODEL_FILE = "torch_length_model.safetensors"
FORMAT = "fleetroute.torch_length_model/1"
Kind = Literal["rank", "dist"]
Progress = Callable[[int, int], None]

_UPPER_LOG = np.log(np.asarray(LENGTH_BINS, dtype=np.float64))
_LOWER_LOG = np.concatenate(([0.0], _UPPER_LOG[:-1]))
_BIN_LOG_WIDTHS = _UPPER_LOG - _LOWER_LOG
_BIN_MEANS = (np.exp(_UPPER_LOG) - np.exp(_LOWER_LOG)) / _BIN_LOG_WIDTHS
_RESIDUAL_LEVELS = np.linspace(0.0, 1.0, 101)
_QUANTILE_LEVELS = np.array([0.5, 0.9])
_NUMPY_MAX_ROWS = 16


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Sizes and optimiser settings shared by both heads (the defaults suit ~10k rows, ~100-500 inputs).

    ``list_size`` requests per ListMLE list, ``lists_per_step`` lists per optimiser step (rank head);
    ``batch_size`` rows per step and ``label_smoothing`` the probability moved to neighbouring bins
    (dist head); ``calibration_fraction`` of the rows (or of the groups) is held out of the rank
    head's training to fit its score-to-length calibration.
    """

    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.3
    learning_rate: float = 2e-3
    weight_decay: float = 1e-2
    list_size: int = 32
    lists_per_step: int = 8
    batch_size: int = 256
    label_smoothing: float = 0.2
    calibration_fraction: float = 0.2


def _new_layers(input_dim: int, hidden: Sequence[int], outputs: int, dropout: float = 0.0) -> nn.Sequential:
    """The trunk and head, on standardised inputs: ReLU hidden layers with dropout, then a linear head."""
    from torch import nn

    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, outputs))
    return nn.Sequential(*layers)


@dataclass(frozen=True, slots=True)
class _Calibration:
    """The rank head's score → log length map (isotonic knots) and log residual quantiles."""

    score_knots: np.ndarray
    log_length_knots: np.ndarray
    residual_quantiles: np.ndarray
    mean_exp_residual: float

    def summaries(self, scores: np.ndarray) -> np.ndarray:
        centre = np.interp(scores, self.score_knots, self.log_length_knots)
        offsets = np.interp(_QUANTILE_LEVELS, _RESIDUAL_LEVELS, self.residual_quantiles)
        mean = np.exp(centre) * self.mean_exp_residual
        return np.concatenate([mean[:, None], np.exp(centre[:, None] + offsets)], axis=1)

    def bins(self, scores: np.ndarray) -> np.ndarray:
        centre = np.interp(scores, self.score_knots, self.log_length_knots)
        cdf = np.interp(_UPPER_LOG[None, :-1] - centre[:, None], self.residual_quantiles, _RESIDUAL_LEVELS)
        edges = np.ones((len(centre), len(LENGTH_BINS) + 1))
        edges[:, 0] = 0.0
        edges[:, 1:-1] = cdf
        return np.diff(edges, axis=1)


def listmle_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The ListMLE loss of ``scores`` (lists × items) against the order of ``targets`` (larger first),
    averaged over lists: minus the log-likelihood of the true order under the Plackett-Luce model.
    Ties keep their order in the list (shuffle lists to break them at random)."""
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(
            f"scores and targets must both be (lists, items), got {scores.shape} and {targets.shape}"
        )
    ordered = scores.gather(1, targets.argsort(dim=1, descending=True, stable=True))
    tail_log_sums = ordered.flip(1).logcumsumexp(dim=1).flip(1)
    return (tail_log_sums - ordered).sum(dim=1).mean()


class TorchLengthModel:
    """A trained rank or dist head: ``predict`` gives (mean, p50, p90) in tokens per row,
    ``predict_bins`` probabilities over ``LENGTH_BINS``."""

    def __init__(
        self, kind: Kind, layers: nn.Sequential, scaler: tuple[np.ndarray, np.ndarray],
        calibration: _Calibration | None = None,
    ) -> None:  # fmt: skip
        """``layers`` from ``_new_layers``; ``scaler`` the input means and deviations they expect."""
        from torch import nn

        if kind not in ("rank", "dist"):
            raise ValueError(f"kind must be 'rank' or 'dist', got {kind!r}")
        if (kind == "rank") != (calibration is not None):
            raise ValueError("a rank model needs a calibration and a dist model has none")
        self.kind: Kind = kind
        self._net = layers.eval()
        self._calibration = calibration
        self._mean, self._scale = (np.asarray(a, dtype=np.float32).copy() for a in scaler)
        self.input_dim = len(self._mean)
        linear = [layer for layer in layers if isinstance(layer, nn.Linear)]
        if linear[0].in_features != self.input_dim or self._scale.shape != self._mean.shape:
            raise ValueError(
                f"the scaler has {self.input_dim} inputs, the first layer {linear[0].in_features}"
            )
        self.hidden = tuple(layer.out_features for layer in linear[:-1])
        self._layers = [
            (layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy()) for layer in linear
        ]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, 3): mean, p50 and p90 of the output length in tokens."""
        return self._summaries(self._outputs(x))

    def predict_bins(self, x: np.ndarray) -> np.ndarray:
        """(n, len(LENGTH_BINS)): the probability of each length bin; rows sum to 1."""
        return self._bins(self._outputs(x))

    def predict_scores(self, x: np.ndarray) -> np.ndarray:
        """(n,): the rank head's raw scores (longer answers score higher), or the dist head's mean."""
        outputs = self._outputs(x)
        return outputs[:, 0] if self._calibration is not None else self._summaries(outputs)[:, 0]

    def estimate(self, row: np.ndarray) -> LengthEstimate:
        """One request's ``LengthEstimate`` with its bins."""
        outputs = self._outputs(np.asarray(row, dtype=np.float32).reshape(1, -1))
        mean, p50, p90 = (float(v) for v in self._summaries(outputs)[0])
        probabilities = self._bins(outputs)[0]
        return LengthEstimate(mean, p50, p90, tuple(zip(LENGTH_BINS, map(float, probabilities), strict=True)))

    def save(self, directory: Path) -> None:
        import torch
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"layers.{name}": t.detach().contiguous() for name, t in self._net.state_dict().items()}
        tensors["input_mean"] = torch.from_numpy(self._mean)
        tensors["input_scale"] = torch.from_numpy(self._scale)
        if self._calibration is not None:
            c = self._calibration
            tensors["calibration.score_knots"] = torch.from_numpy(np.ascontiguousarray(c.score_knots))
            tensors["calibration.log_length_knots"] = torch.from_numpy(
                np.ascontiguousarray(c.log_length_knots)
            )
            tensors["calibration.residual_quantiles"] = torch.from_numpy(c.residual_quantiles.copy())
            tensors["calibration.mean_exp_residual"] = torch.tensor(
                [c.mean_exp_residual], dtype=torch.float64
            )
        metadata = {
            "format": FORMAT,
            "kind": self.kind,
            "input_dim": str(self.input_dim),
            "hidden": json.dumps(list(self.hidden)),
            "length_bins": json.dumps(list(LENGTH_BINS)),
        }
        save_file(tensors, str(directory / MODEL_FILE), metadata=metadata)

    @classmethod
    def load(cls, directory: Path) -> TorchLengthModel:
        """The model saved in ``directory``; ``ValueError`` if it is missing, corrupt or inconsistent."""
        tensors, metadata = _read_model_file(directory / MODEL_FILE)
        if metadata.get("kind") not in ("rank", "dist"):
            raise ValueError(f"{directory / MODEL_FILE}: unknown model kind {metadata.get('kind')!r}")
        kind: Kind = "rank" if metadata["kind"] == "rank" else "dist"
        try:
            input_dim = int(metadata["input_dim"])
            hidden = tuple(int(size) for size in json.loads(metadata["hidden"]))
            outputs = 1 if kind == "rank" else len(LENGTH_BINS)
            layers = _new_layers(input_dim, hidden, outputs)
            layers.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("layers.")})
            scaler = (tensors["input_mean"].numpy(), tensors["input_scale"].numpy())
            calibration = None
            if kind == "rank":
                calibration = _Calibration(
                    tensors["calibration.score_knots"].numpy(),
                    tensors["calibration.log_length_knots"].numpy(),
                    tensors["calibration.residual_quantiles"].numpy(),
                    float(tensors["calibration.mean_exp_residual"].item()),
                )
                _check_calibration(calibration)
            return cls(kind, layers, scaler, calibration)
        except (KeyError, TypeError, RuntimeError, ValueError) as error:
            raise ValueError(
                f"{directory / MODEL_FILE} does not hold a consistent {kind} model: {error}"
            ) from error

    def _summaries(self, outputs: np.ndarray) -> np.ndarray:
        if self._calibration is None:
            return _summaries_from_bins(_softmax(outputs))
        return self._calibration.summaries(outputs[:, 0])

    def _bins(self, outputs: np.ndarray) -> np.ndarray:
        return _softmax(outputs) if self._calibration is None else self._calibration.bins(outputs[:, 0])

    def _outputs(self, x: np.ndarray) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.input_dim:
            raise ValueError(f"expected inputs of shape (n, {self.input_dim}), got {rows.shape}")
        hidden = (rows - self._mean) / self._scale
        if len(rows) <= _NUMPY_MAX_ROWS:
            for weight, bias in self._layers[:-1]:
                hidden = np.maximum(hidden @ weight + bias, 0.0)
            weight, bias = self._layers[-1]
            return (hidden @ weight + bias).astype(np.float64)  # type: ignore[no-any-return]
        import torch

        with torch.inference_mode():
            return self._net(torch.from_numpy(hidden)).double().numpy()  # type: ignore[no-any-return]


def _read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise ValueError(f"no length model at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            # copies, so that the model outlives the memory-mapped file (which a later save may replace)
            tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}  # noqa: SIM118
    except Exception as error:  # safetensors raises its own error type for a corrupt file
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file (format {metadata.get('format')!r})")
    if metadata.get("length_bins") != json.dumps(list(LENGTH_BINS)):
        raise ValueError(f"{path} was saved with other length bins: {metadata.get('length_bins')}")
    return tensors, metadata


def _check_calibration(calibration: _Calibration) -> None:
    knots = calibration.score_knots
    if knots.ndim != 1 or len(knots) == 0 or knots.shape != calibration.log_length_knots.shape:
        raise ValueError("calibration knots must be two 1-D arrays of the same non-zero length")
    if calibration.residual_quantiles.shape != _RESIDUAL_LEVELS.shape:
        raise ValueError(f"expected {len(_RESIDUAL_LEVELS)} residual quantiles")


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _summaries_from_bins(probabilities: np.ndarray) -> np.ndarray:
    """Mean, p50 and p90 of bin distributions (rows), under the log-uniform rule of the module doc."""
    edges = np.zeros((len(probabilities), len(LENGTH_BINS) + 1))
    np.cumsum(probabilities, axis=1, out=edges[:, 1:])
    # per row and level: the first bin whose cumulative probability reaches the level
    index = np.minimum((edges[:, None, 1:] < _QUANTILE_LEVELS[:, None]).sum(axis=2), len(LENGTH_BINS) - 1)
    before = np.take_along_axis(edges, index, axis=1)
    mass = np.take_along_axis(edges, index + 1, axis=1) - before
    fraction = np.minimum(np.maximum((_QUANTILE_LEVELS - before) / np.maximum(mass, 1e-12), 0.0), 1.0)
    log_quantiles = _LOWER_LOG[index] + fraction * _BIN_LOG_WIDTHS[index]
    return np.concatenate([(probabilities @ _BIN_MEANS)[:, None], np.exp(log_quantiles)], axis=1)


def bin_index(lengths: np.ndarray) -> np.ndarray:
    """The ``LENGTH_BINS`` index of each length (lengths above the last bound go to the last bin)."""
    return np.minimum(np.searchsorted(LENGTH_BINS, lengths, side="left"), len(LENGTH_BINS) - 1)


# -- training ---------------------------------------------------------------------------------------
def train_rank_model(
    x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 20, progress: Progress | None = None,
    *, groups: np.ndarray | None = None, config: TrainConfig | None = None,
) -> TorchLengthModel:  # fmt: skip
    """A rank head trained with ListMLE on ``x`` (n, d) and lengths ``y`` (n,) in tokens, calibrated on
    held-out rows (whole ``groups``, e.g. prompts, when given so that no group is on both sides)."""
    import torch

    cfg = config or TrainConfig()
    features, lengths = _checked(x, y, groups)
    rng = np.random.default_rng(seed)
    fit_rows, calibration_rows = _calibration_split(len(lengths), groups, cfg.calibration_fraction, rng)
    scaler = _scaler(features[fit_rows])
    list_size = min(cfg.list_size, len(fit_rows))
    lists_per_epoch = len(fit_rows) // list_size

    def epoch_lists() -> list[np.ndarray]:
        lists = rng.permutation(fit_rows)[: lists_per_epoch * list_size].reshape(lists_per_epoch, list_size)
        return [lists[i : i + cfg.lists_per_step] for i in range(0, lists_per_epoch, cfg.lists_per_step)]

    with _seeded_single_thread(seed):
        layers = _new_layers(features.shape[1], cfg.hidden, 1, cfg.dropout)
        inputs = torch.from_numpy((features - scaler[0]) / scaler[1])
        targets = torch.from_numpy(np.log(lengths))

        def loss(chunk: torch.Tensor) -> torch.Tensor:
            return listmle_loss(layers(inputs[chunk]).squeeze(-1), targets[chunk])

        _optimise(layers, loss, epoch_lists, epochs, cfg, progress)
        with torch.inference_mode():
            scores = layers(inputs[calibration_rows]).squeeze(-1).double().numpy()
    return TorchLengthModel("rank", layers, scaler, _calibrate(scores, np.log(lengths[calibration_rows])))


def train_dist_model(
    x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 10, progress: Progress | None = None,
    *, config: TrainConfig | None = None,
) -> TorchLengthModel:  # fmt: skip
    """A dist head trained with cross-entropy over ``LENGTH_BINS`` on ``x`` (n, d) and lengths ``y`` (n,)."""
    import torch

    cfg = config or TrainConfig()
    features, lengths = _checked(x, y, None)
    rng = np.random.default_rng(seed)
    scaler = _scaler(features)

    def epoch_batches() -> list[np.ndarray]:
        order = rng.permutation(len(lengths))
        return [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]

    with _seeded_single_thread(seed):
        layers = _new_layers(features.shape[1], cfg.hidden, len(LENGTH_BINS), cfg.dropout)
        inputs = torch.from_numpy((features - scaler[0]) / scaler[1])
        targets = torch.from_numpy(_smoothed_targets(bin_index(lengths), cfg.label_smoothing))

        def loss(batch: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(layers(inputs[batch]), targets[batch])

        _optimise(layers, loss, epoch_batches, epochs, cfg, progress)
    return TorchLengthModel("dist", layers, scaler)


def _optimise(
    layers: nn.Sequential, loss: Callable[[torch.Tensor], torch.Tensor],
    epoch_batches: Callable[[], list[np.ndarray]], epochs: int, cfg: TrainConfig, progress: Progress | None,
) -> None:  # fmt: skip
    """AdamW on ``loss`` over each epoch's batches of row indices; ``layers`` left in eval mode."""
    import torch

    optimiser = torch.optim.AdamW(layers.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    layers.train()
    for epoch in range(epochs):
        batches = epoch_batches()
        for step, batch in enumerate(batches):
            value = loss(torch.from_numpy(batch))
            optimiser.zero_grad()
            value.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            if progress is not None:
                progress(epoch * len(batches) + step + 1, epochs * len(batches))
    layers.eval()


@contextmanager
def _seeded_single_thread(seed: int) -> Iterator[None]:
    """Torch seeded with ``seed`` and limited to one thread, both restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _checked(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(x, dtype=np.float32)
    lengths = np.asarray(y, dtype=np.float64)
    if features.ndim != 2 or lengths.ndim != 1 or len(features) != len(lengths):
        raise ValueError(
            f"expected x of shape (n, d) and y of shape (n,), got {features.shape} and {lengths.shape}"
        )
    if len(lengths) < 20:
        raise ValueError(f"need at least 20 training rows, got {len(lengths)}")
    if not np.isfinite(features).all() or not np.isfinite(lengths).all():
        raise ValueError("x and y must be finite")
    if (lengths < 1).any():
        raise ValueError("output lengths must be at least 1 token")
    if groups is not None and np.shape(groups) != lengths.shape:
        raise ValueError(f"groups must have shape {lengths.shape}, got {np.shape(groups)}")
    return features, lengths


def _calibration_split(
    rows: int, groups: np.ndarray | None, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in (0, 1), got {fraction}")
    labels = np.arange(rows) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    distinct = int(labels.max()) + 1
    held = rng.permutation(distinct)[: max(1, round(distinct * fraction))]
    is_held = np.isin(labels, held)
    fit, calibration = np.flatnonzero(~is_held), np.flatnonzero(is_held)
    if len(fit) < 2 or len(calibration) < 2:
        raise ValueError("too few rows or groups to hold out calibration rows")
    return fit, calibration


def _scaler(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means and deviations to standardise inputs with (a constant input keeps a deviation of 1)."""
    scale = features.std(axis=0)
    return features.mean(axis=0), np.where(scale > 1e-6, scale, 1.0).astype(np.float32)


def _calibrate(scores: np.ndarray, log_lengths: np.ndarray) -> _Calibration:
    from sklearn.isotonic import IsotonicRegression  # type: ignore[import-untyped]

    isotonic = IsotonicRegression(out_of_bounds="clip").fit(scores, log_lengths)
    residuals = log_lengths - isotonic.predict(scores)
    return _Calibration(
        np.asarray(isotonic.X_thresholds_, dtype=np.float64),
        np.asarray(isotonic.y_thresholds_, dtype=np.float64),
        np.quantile(residuals, _RESIDUAL_LEVELS),
        float(np.mean(np.exp(residuals))),
    )


def _smoothed_targets(bins: np.ndarray, smoothing: float) -> np.ndarray:
    """One-hot bin targets with ``smoothing`` of the mass moved to the neighbouring bins."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {smoothing}")
    count = len(LENGTH_BINS)
    targets = np.zeros((len(bins), count), dtype=np.float32)
    rows = np.arange(len(bins))
    has_lower, has_upper = bins > 0, bins < count - 1
    share = smoothing / (has_lower.astype(np.float32) + has_upper)
    targets[rows, bins] = 1.0 - smoothing
    targets[rows[has_lower], bins[has_lower] - 1] += share[has_lower]
    targets[rows[has_upper], bins[has_upper] + 1] += share[has_upper]
    return targets
