"""Replica speeds: the GPU cost model of each (GPU, model) pair, refined by observed TTFT.

``SpeedCorrection`` keeps an exponentially weighted moving average of how much faster (> 1) or
slower (< 1) a replica really is than its speed predicted, clamped to [0.25, 4]; it becomes
``ReplicaSpeed.correction``, which multiplies the modelled prefill rate and divides the decode step.
"""

from __future__ import annotations

import math

from replica_agent.executors.cost_model import StepCostModel
from replica_agent.executors.gpu_profiles import GPU_PROFILES, MODEL_PROFILES
from router.policy.view import ReplicaSpeed

MIN_CORRECTION = 0.25
MAX_CORRECTION = 4.0
DEFAULT_CORRECTION_ALPHA = 0.1
# Below this predicted prefill time, fixed per-request overheads dominate the measured TTFT and the
# ratio says nothing about throughput.
DEFAULT_MIN_PREDICTED_S = 0.005


class SpeedCorrection:
    """EWMA of ``correction × predicted / actual`` over observed first tokens."""

    def __init__(
        self, alpha: float = DEFAULT_CORRECTION_ALPHA, min_predicted_s: float = DEFAULT_MIN_PREDICTED_S
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if min_predicted_s < 0:
            raise ValueError(f"min_predicted_s must be non-negative, got {min_predicted_s}")
        self.alpha = alpha
        self.min_predicted_s = min_predicted_s
        self.value = 1.0
        self.samples = 0

    def observe(self, predicted_prefill_s: float, actual_ttft_s: float) -> bool:
        """Fold one observation in; returns whether it counted.

        ``predicted_prefill_s`` is what the replica's speed *as the view showed it* (this correction
        included) predicted, so the observed factor is ``value × predicted / actual``. Predictions
        shorter than ``min_predicted_s`` are ignored. Raises ValueError on non-finite or non-positive
        times.
        """
        for name, seconds in (("predicted_prefill_s", predicted_prefill_s), ("actual_ttft_s", actual_ttft_s)):
            if not (math.isfinite(seconds) and seconds > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds, got {seconds}")
        if predicted_prefill_s < self.min_predicted_s:
            return False
        observed = _clamp(self.value * predicted_prefill_s / actual_ttft_s)
        self.value = _clamp((1.0 - self.alpha) * self.value + self.alpha * observed)
        self.samples += 1
        return True


class CostModels:
    """One :class:`StepCostModel` per known (GPU, model profile) pair, shared by every replica with
    that pair (policies memoise evaluations by cost-model identity)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], StepCostModel | None] = {}

    def get(self, gpu: str, model_profile: str) -> StepCostModel | None:
        """The cost model, or None when either profile is unknown."""
        key = (gpu, model_profile)
        if key not in self._models:
            gpu_profile, model = GPU_PROFILES.get(gpu), MODEL_PROFILES.get(model_profile)
            if gpu_profile is None or model is None:
                self._models[key] = None
            else:
                self._models[key] = StepCostModel(gpu_profile, model)
        return self._models[key]

    def speed(self, gpu: str, model_profile: str, correction: float = 1.0) -> ReplicaSpeed:
        return ReplicaSpeed(self.get(gpu, model_profile), correction)


def _clamp(factor: float) -> float:
    return min(MAX_CORRECTION, max(MIN_CORRECTION, factor))
