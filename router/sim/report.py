"""Per-request outcomes of a simulation and the summary a run reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """A completed request; times in seconds of virtual time, latencies include the per-request
    overhead of the replica's cost model."""

    request_id: str
    arrival_s: float
    replica_id: str
    ttft_s: float
    e2e_s: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    preemptions: int
    finish_reason: str

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (0 for single-token answers)."""
        if self.output_tokens <= 1:
            return 0.0
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def as_dict(self) -> dict[str, float | int | str]:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {**fields, "tpot_s": self.tpot_s}

    def meets(self, slo_ttft_s: float, slo_tpot_s: float) -> bool:
        return self.ttft_s <= slo_ttft_s and self.tpot_s <= slo_tpot_s


@dataclass(frozen=True, slots=True)
class DroppedRequest:
    request_id: str
    arrival_s: float
    reason: str

    def as_dict(self) -> dict[str, float | str]:
        return {"request_id": self.request_id, "arrival_s": self.arrival_s, "dropped": self.reason}


@dataclass(frozen=True, slots=True)
class ReplicaStats:
    """One replica over a run; ``busy_s`` is the virtual time it spent stepping, and the two powers
    are its board power while stepping and while idle (from its cost model)."""

    replica_id: str
    gpu: str
    served_tokens: int
    preemptions: int
    kv_util_mean: float
    busy_s: float = 0.0
    busy_watts: float = 0.0
    idle_watts: float = 0.0

    def energy_j(self, span_s: float) -> float:
        """Joules over a run lasting ``span_s``: busy time at full power, the rest at idle power."""
        return self.busy_s * self.busy_watts + max(0.0, span_s - self.busy_s) * self.idle_watts


@dataclass(frozen=True, slots=True)
class SimResult:
    policy: str
    requests: int
    records: tuple[RequestRecord, ...]
    dropped: tuple[DroppedRequest, ...]
    replicas: tuple[ReplicaStats, ...]
    sim_wall_s: float

    def summary(self, slo_ttft_s: float = 2.0, slo_tpot_s: float = 0.1) -> dict[str, float | int | str]:
        records = self.records
        ttft = [r.ttft_s for r in records]
        tpot = [r.tpot_s for r in records if r.output_tokens > 1]
        e2e = [r.e2e_s for r in records]
        prompt = sum(r.prompt_tokens for r in records)
        return {
            "policy": self.policy,
            "requests": self.requests,
            "completed": len(records),
            "dropped": len(self.dropped),
            "ttft_p50": percentile(ttft, 50),
            "ttft_p90": percentile(ttft, 90),
            "ttft_p99": percentile(ttft, 99),
            "tpot_p50": percentile(tpot, 50),
            "tpot_p99": percentile(tpot, 99),
            "e2e_p50": percentile(e2e, 50),
            "e2e_p99": percentile(e2e, 99),
            "throughput_tok_s": self.throughput_tok_s,
            "goodput": sum(r.meets(slo_ttft_s, slo_tpot_s) for r in records) / self.requests
            if self.requests
            else 0.0,
            "preemptions": sum(r.preemptions for r in self.replicas),
            "prefix_hit_frac": sum(r.cached_tokens for r in records) / prompt if prompt else 0.0,
            "kv_util_mean": float(np.mean([r.kv_util_mean for r in self.replicas])) if self.replicas else 0.0,
            "imbalance": imbalance([r.served_tokens for r in self.replicas]),
            "energy_j_per_token": self.energy_j_per_token,
            **{f"energy_j_{gpu}": joules for gpu, joules in sorted(self.energy_by_gpu_j().items())},
            "sim_wall_s": self.sim_wall_s,
        }

    def replica_energy_j(self) -> dict[str, float]:
        """Joules per replica id over the run's makespan (idle replicas still draw idle power)."""
        span = self.makespan_s
        return {r.replica_id: r.energy_j(span) for r in self.replicas}

    def energy_by_gpu_j(self) -> dict[str, float]:
        span = self.makespan_s
        totals: dict[str, float] = {}
        for r in self.replicas:
            totals[r.gpu] = totals.get(r.gpu, 0.0) + r.energy_j(span)
        return totals

    @property
    def energy_j_per_token(self) -> float:
        """The fleet's joules over the output tokens it produced (nan without any)."""
        tokens = sum(r.output_tokens for r in self.records)
        return sum(self.replica_energy_j().values()) / tokens if tokens else float("nan")

    @property
    def makespan_s(self) -> float:
        if not self.records:
            return 0.0
        start = min(r.arrival_s for r in self.records)
        return max(r.arrival_s + r.e2e_s for r in self.records) - start

    @property
    def throughput_tok_s(self) -> float:
        span = self.makespan_s
        return sum(r.output_tokens for r in self.records) / span if span > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def imbalance(served: Sequence[int]) -> float:
    """Max over mean of the per-replica served tokens: 1.0 is perfectly even."""
    mean = float(np.mean(served)) if served else 0.0
    return max(served) / mean if mean > 0 else 0.0
