"""How good a length predictor is on held-out requests.

Ranking is what token-aware scheduling needs, so the headline metrics are Kendall's τ (tau-b) and
Spearman's ρ between the predicted mean and the true length, pooled over all requests and within each
model (the same prompt's answer length depends a lot on which model answers, so the pooled τ credits
knowing the model; the per-model τ measures the text signal alone). A predictor that gives every
request the same number has no ranking skill: its τ is reported as 0. Also the mean absolute error of
the predicted mean, the fraction of true lengths at or under the predicted p90, and the latency of
single-request ``predict`` calls made one at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from predictors.base import OutputLengthPredictor, PredictorFeatures


@dataclass(frozen=True, slots=True)
class Evaluation:
    n: int
    kendall_tau: float
    spearman: float
    mae_tokens: float
    p90_coverage: float
    latency_p50_us: float
    latency_p99_us: float
    per_model_tau_mean: float
    kendall_tau_p50: float
    per_model_tau: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()} | {
            "per_model_tau": {model: round(tau, 4) for model, tau in self.per_model_tau.items()}
        }


def _rank_correlation(function: Callable[..., Any], predicted: np.ndarray, actual: np.ndarray) -> float:
    if len(actual) < 2 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return 0.0
    value = float(function(predicted, actual).statistic)
    return value if math.isfinite(value) else 0.0


def kendall_tau(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Kendall's tau-b; 0 when either side is constant."""
    from scipy.stats import kendalltau

    return _rank_correlation(kendalltau, np.asarray(predicted), np.asarray(actual))


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return _rank_correlation(spearmanr, np.asarray(predicted), np.asarray(actual))


def batch_estimates(predictor: OutputLengthPredictor, requests: Sequence[PredictorFeatures]) -> np.ndarray:
    """(n, 3) mean, p50, p90: in one batch when the predictor offers ``predict_many``, else one by one."""
    predict_many = getattr(predictor, "predict_many", None)
    if predict_many is not None:
        return np.asarray(predict_many(requests), dtype=np.float64).reshape(len(requests), 3)
    rows = [predictor.predict(request) for request in requests]
    return np.array([(e.mean, e.p50, e.p90) for e in rows], dtype=np.float64).reshape(len(requests), 3)


def single_request_latencies_us(
    predictor: OutputLengthPredictor,
    requests: Sequence[PredictorFeatures],
    clock: Callable[[], float] = time.perf_counter,
) -> np.ndarray:
    """Microseconds of each ``predict`` call, one request at a time."""
    latencies = np.empty(len(requests))
    for index, request in enumerate(requests):
        start = clock()
        predictor.predict(request)
        latencies[index] = (clock() - start) * 1e6
    return latencies


def score(estimates: np.ndarray, actual: Sequence[int], models: Sequence[str]) -> dict[str, Any]:
    """Accuracy metrics of (n, 3) mean/p50/p90 ``estimates`` against the true lengths."""
    truth = np.asarray(actual, dtype=np.float64)
    if estimates.shape != (len(truth), 3) or len(models) != len(truth):
        raise ValueError(f"{estimates.shape} estimates for {len(truth)} lengths and {len(models)} models")
    if len(truth) == 0:
        raise ValueError("cannot evaluate on zero requests")
    model_names = np.asarray(models)
    per_model = {
        model: kendall_tau(estimates[model_names == model, 0], truth[model_names == model])
        for model in sorted(set(models))
    }
    return {
        "n": len(truth),
        "kendall_tau": kendall_tau(estimates[:, 0], truth),
        "kendall_tau_p50": kendall_tau(estimates[:, 1], truth),
        "spearman": spearman(estimates[:, 0], truth),
        "mae_tokens": float(np.abs(estimates[:, 0] - truth).mean()),
        "p90_coverage": float((truth <= estimates[:, 2]).mean()),
        "per_model_tau": per_model,
        "per_model_tau_mean": float(np.mean(list(per_model.values()))),
    }


def evaluate(
    predictor: OutputLengthPredictor,
    requests: Sequence[PredictorFeatures],
    actual: Sequence[int],
    latency_requests: int = 300,
    clock: Callable[[], float] = time.perf_counter,
) -> Evaluation:
    """All metrics; latency from the first ``latency_requests`` requests, each predicted alone."""
    if len(requests) != len(actual):
        raise ValueError(f"{len(requests)} requests but {len(actual)} lengths")
    metrics = score(batch_estimates(predictor, requests), actual, [r.model for r in requests])
    latencies = single_request_latencies_us(predictor, requests[:latency_requests], clock)
    return Evaluation(
        latency_p50_us=float(np.percentile(latencies, 50)) if latencies.size else 0.0,
        latency_p99_us=float(np.percentile(latencies, 99)) if latencies.size else 0.0,
        **metrics,
    )
