"""A vLLM server's Prometheus ``/metrics`` text → :class:`VllmLoad` → the sidecar's snapshot.

Pure: the caller fetches the text. Names follow vLLM's documented metrics: the load gauges
``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc``
(``vllm:gpu_cache_usage_perc`` before vLLM 0.10), ``vllm:cache_config_info`` (value 1, the cache
settings as string labels, ``num_gpu_blocks`` "None" until profiled), and the counters
``vllm:num_preemptions_total``, ``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` and
``vllm:prefix_cache_{queries,hits}_total`` (``vllm:gpu_prefix_cache_*`` in older releases).

Series are matched by *sample* name, since the parser strips ``_total`` from a counter's family name
but not from its samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from protos.snapshot import ReplicaSnapshot
from replica_agent.engine.engine import ReplicaIdentity

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_CONFIG = ("vllm:cache_config_info",)
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
PROMPT_TOKENS = ("vllm:prompt_tokens_total", "vllm:prompt_tokens")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "vllm:generation_tokens")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
MODEL_LABEL = "model_name"

Series = list[tuple[Mapping[str, str], float]]


class MetricsFormatError(ValueError):
    """The text is not Prometheus exposition format."""


class MissingMetricError(MetricsFormatError):
    """A gauge the sidecar cannot work without is absent (for the requested model)."""


@dataclass(frozen=True, slots=True)
class VllmLoad:
    """One scrape. Counters are totals since the server started; None where vLLM did not report."""

    num_requests_running: int
    num_requests_waiting: int
    kv_cache_usage: float  # fraction of KV blocks in use, 0..1
    num_gpu_blocks: int | None = None
    block_size: int | None = None
    preemptions_total: int = 0
    prompt_tokens_total: int | None = None
    generation_tokens_total: int | None = None
    prefix_cache_queries_total: int | None = None
    prefix_cache_hits_total: int | None = None
    model_names: tuple[str, ...] = ()

    @property
    def used_blocks(self) -> int | None:
        if self.num_gpu_blocks is None:
            return None
        return min(self.num_gpu_blocks, max(0, round(self.kv_cache_usage * self.num_gpu_blocks)))


def collect_samples(text: str) -> dict[str, Series]:
    """Every sample in ``text`` by sample name; :class:`MetricsFormatError` on anything unparsable."""
    samples: dict[str, Series] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, float(sample.value)))
    except (ValueError, TypeError, IndexError, KeyError) as error:
        raise MetricsFormatError(f"not Prometheus text exposition format: {error}") from None
    return samples


def _for_model(series: Series, model_name: str | None) -> Series:
    """Series of ``model_name``; series without a model label (vLLM's cache_config_info) always count."""
    if model_name is None:
        return series
    return [(labels, value) for labels, value in series if labels.get(MODEL_LABEL, model_name) == model_name]


def _first_present(samples: Mapping[str, Series], names: Iterable[str]) -> Series | None:
    for name in names:
        if name in samples:
            return samples[name]
    return None


def _finite(series: Series) -> list[float]:
    return [value for _, value in series if math.isfinite(value)]


def _required(samples: Mapping[str, Series], names: tuple[str, ...], model_name: str | None) -> list[float]:
    found = _first_present(samples, names)
    values = _finite(_for_model(found or [], model_name))
    if not values:
        which = " or ".join(names)
        scope = f" for model {model_name!r}" if model_name is not None else ""
        raise MissingMetricError(f"the metrics have no {which}{scope}: is this a vLLM server?")
    return values


def _counter(samples: Mapping[str, Series], names: tuple[str, ...], model_name: str | None) -> int | None:
    found = _first_present(samples, names)
    if found is None:
        return None
    return round(sum(_finite(_for_model(found, model_name))))


def _label_int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:  # "None" before the engine has profiled its memory
        return None


def cache_config(
    samples: Mapping[str, Series], model_name: str | None = None
) -> tuple[int | None, int | None]:
    """(num_gpu_blocks, block_size) from ``vllm:cache_config_info``; blocks add up over engines."""
    series = _for_model(_first_present(samples, CACHE_CONFIG) or [], model_name)
    blocks = [_label_int(labels.get("num_gpu_blocks")) for labels, _ in series]
    sizes = [_label_int(labels.get("block_size")) for labels, _ in series]
    known_blocks = [b for b in blocks if b is not None]
    known_sizes = [s for s in sizes if s is not None]
    return (sum(known_blocks) if known_blocks else None, max(known_sizes) if known_sizes else None)


def parse_vllm_metrics(text: str, model_name: str | None = None) -> VllmLoad:
    """The load in a vLLM ``/metrics`` text, summed over model and engine series, or only the series
    labelled ``model_name=<model_name>`` when one is given. KV usage is a fraction, so several series
    are averaged rather than summed."""
    samples = collect_samples(text)
    running = _required(samples, (RUNNING,), model_name)
    waiting = _required(samples, (WAITING,), model_name)
    usage = _required(samples, KV_USAGE, model_name)
    num_gpu_blocks, block_size = cache_config(samples, model_name)
    names = {labels[MODEL_LABEL] for labels, _ in samples.get(RUNNING, []) if MODEL_LABEL in labels}
    return VllmLoad(
        num_requests_running=max(0, round(sum(running))),
        num_requests_waiting=max(0, round(sum(waiting))),
        kv_cache_usage=min(1.0, max(0.0, sum(usage) / len(usage))),
        num_gpu_blocks=num_gpu_blocks,
        block_size=block_size,
        preemptions_total=_counter(samples, PREEMPTIONS, model_name) or 0,
        prompt_tokens_total=_counter(samples, PROMPT_TOKENS, model_name),
        generation_tokens_total=_counter(samples, GENERATION_TOKENS, model_name),
        prefix_cache_queries_total=_counter(samples, PREFIX_QUERIES, model_name),
        prefix_cache_hits_total=_counter(samples, PREFIX_HITS, model_name),
        model_names=tuple(sorted(names)),
    )


@dataclass(frozen=True, slots=True)
class TokenRates:
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0


def token_rates(older: tuple[float, VllmLoad], newer: tuple[float, VllmLoad]) -> TokenRates:
    """Prompt and generation token rates between two timed scrapes (0 across a counter reset)."""
    (t0, a), (t1, b) = older, newer
    span = t1 - t0
    if span <= 0:
        return TokenRates()

    def rate(before: int | None, after: int | None) -> float:
        # A labelled counter has no series until its first increment: absent before means zero.
        if after is None or after < (before or 0):
            return 0.0
        return (after - (before or 0)) / span

    return TokenRates(
        rate(a.prompt_tokens_total, b.prompt_tokens_total),
        rate(a.generation_tokens_total, b.generation_tokens_total),
    )


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A request the sidecar forwarded and that has not finished, as far as the sidecar knows."""

    prompt_tokens: int  # estimated: the server reports the real count only at the end
    output_tokens: int = 0


def snapshot_from_load(
    load: VllmLoad,
    *,
    identity: ReplicaIdentity,
    seq: int,
    now: float,
    in_flight: Iterable[ForwardedRequest] = (),
    rates: TokenRates = TokenRates(),
    admitted_ids: tuple[str, ...] = (),
    healthy: bool = True,
    draining: bool = False,
) -> ReplicaSnapshot:
    """What routers see: the server's gauges, with token counts from the sidecar's own requests
    (one that has streamed no token yet is waiting for its prefill)."""
    requests = list(in_flight)
    total = load.num_gpu_blocks or 0
    # Requests forwarded since the last scrape may not be in the server's gauges yet: they wait.
    unseen = max(0, len(requests) - load.num_requests_running - load.num_requests_waiting)
    return ReplicaSnapshot(
        replica_id=identity.replica_id, model=identity.model, gpu=identity.gpu, tier=identity.tier,
        seq=seq, time=now, total_blocks=total, free_blocks=total - (load.used_blocks or 0),
        cached_blocks=0, block_size=load.block_size or 0, num_running=load.num_requests_running,
        num_waiting=load.num_requests_waiting + unseen,
        waiting_prefill_tokens=sum(r.prompt_tokens for r in requests if not r.output_tokens),
        running_context_tokens=sum(r.prompt_tokens + r.output_tokens for r in requests if r.output_tokens),
        preemptions_total=load.preemptions_total, prefill_tokens_per_s=rates.prefill_tokens_per_s,
        decode_tokens_per_s=rates.decode_tokens_per_s, admitted_ids=admitted_ids, healthy=healthy,
        draining=draining,
    )  # fmt: skip
