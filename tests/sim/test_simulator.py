import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetroute.simulate_cmd import simulate as simulate_command
from replica_agent.engine.request import RequestSpec, SamplingParams
from replica_agent.engine.step import BatchShape, SeqShape
from router.policy.registry import build_policy
from router.sim.fleet import FleetError, FleetSpec, ReplicaGroup, build_fleet, load_fleet
from router.sim.runner import load_trace, simulate
from router.sim.simulator import SimConfig, Simulator
from router.sim.traces import TraceRequest

AZURE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "traces" / "azure2023_conv.csv"
LATENCY = 0.001


def _request(name: str, arrival: float, prompt: int, output: int, base: int) -> RequestSpec:
    return RequestSpec(
        request_id=name,
        prompt_token_ids=tuple(range(base, base + prompt)),
        arrival_time=arrival,
        params=SamplingParams(max_tokens=output, ignore_eos=True),
    )


def _one_a100() -> Simulator:
    fleet = build_fleet(FleetSpec(replicas=(ReplicaGroup(gpu="a100-80gb"),)))
    return Simulator(fleet, build_policy("round_robin"), SimConfig(router_latency_s=LATENCY))


def test_requests_admitted_together_share_a_step_and_ttft_is_exact() -> None:
    simulator = _one_a100()
    cost = simulator.nodes[0].member.replica.cost_model
    result = simulator.run([_request("a", 0.0, 100, 1, 0), _request("b", 0.0, 200, 2, 10_000)])
    prefill = cost.step_seconds(BatchShape((SeqShape(100, 0), SeqShape(200, 0))))
    decode = cost.step_seconds(BatchShape((SeqShape(1, 200),)))
    records = {r.request_id: r for r in result.records}
    expected_ttft = LATENCY + prefill + cost.request_overhead_s
    assert records["a"].ttft_s == pytest.approx(expected_ttft, abs=1e-12)
    assert records["b"].ttft_s == pytest.approx(expected_ttft, abs=1e-12)
    assert records["a"].e2e_s == pytest.approx(expected_ttft, abs=1e-12)
    assert records["b"].e2e_s == pytest.approx(expected_ttft + decode, abs=1e-12)
    assert records["b"].tpot_s == pytest.approx(decode, abs=1e-12)
    assert not result.dropped


def test_a_request_arriving_mid_step_waits_for_the_next_step() -> None:
    simulator = _one_a100()
    cost = simulator.nodes[0].member.replica.cost_model
    result = simulator.run([_request("a", 0.0, 100, 1, 0), _request("b", 0.0005, 300, 1, 10_000)])
    first = cost.step_seconds(BatchShape((SeqShape(100, 0),)))
    second = cost.step_seconds(BatchShape((SeqShape(300, 0),)))
    records = {r.request_id: r for r in result.records}
    expected_b = LATENCY + first + second - 0.0005 + cost.request_overhead_s
    assert records["b"].ttft_s == pytest.approx(expected_b, abs=1e-12)


@pytest.fixture(scope="module")
def azure_trace() -> list[TraceRequest]:
    return load_trace(AZURE, limit=300)


def test_same_seed_same_summary(azure_trace: list[TraceRequest]) -> None:
    config = SimConfig(seed=7)
    runs = [simulate(azure_trace[:150], load_fleet("hetero8"), "random", config, rate_scale=20) for _ in "ab"]
    summaries = [run.summary() for run in runs]
    for summary in summaries:
        summary.pop("sim_wall_s")
    assert summaries[0] == summaries[1]
    assert runs[0].records == runs[1].records


def test_every_request_completes_or_is_dropped_with_a_reason(azure_trace: list[TraceRequest]) -> None:
    fleet = FleetSpec(replicas=(ReplicaGroup(gpu="a100-80gb", count=2),), engine={"max_model_len": 1024})
    result = simulate(azure_trace[:120], fleet, "least_request", rate_scale=10)
    ids = [r.request_id for r in result.records] + [d.request_id for d in result.dropped]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(120))
    assert result.dropped, "prompts over max_model_len must be reported"
    assert all("max_model_len" in d.reason for d in result.dropped)
    summary = result.summary()
    assert summary["requests"] == 120
    assert summary["completed"] == 120 - len(result.dropped)


def test_sal_beats_round_robin_tail_ttft_on_a_loaded_heterogeneous_fleet(
    azure_trace: list[TraceRequest],
) -> None:
    fleet = load_fleet("hetero8")
    summaries = {p: simulate(azure_trace, fleet, p, rate_scale=20).summary() for p in ("round_robin", "sal")}
    assert summaries["sal"]["completed"] == summaries["round_robin"]["completed"] == 300
    assert float(summaries["sal"]["ttft_p99"]) < float(summaries["round_robin"]["ttft_p99"])


def test_yaml_fleet_and_unknown_fleet(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text("replicas:\n  - {gpu: v100-32gb, count: 2, tier: edge}\n  - {gpu: h100-80gb}\n")
    fleet = load_fleet(str(path))
    assert (fleet.name, fleet.size, fleet.model) == ("edge", 3, "llama-3.1-8b")
    with pytest.raises(FleetError):
        load_fleet("no-such-fleet")
    path.write_text("replicas: []\n")
    with pytest.raises(FleetError):
        load_fleet(str(path))


def test_command_prints_one_json_object_per_policy(tmp_path: Path) -> None:
    args = ["--trace", str(AZURE), "--limit", "40", "--policy", "round_robin,sal", "--rate-scale", "5"]
    args += ["--json", "--records", str(tmp_path / "records.jsonl")]
    outcome = CliRunner().invoke(simulate_command, args)
    assert outcome.exit_code == 0, outcome.output
    lines = [json.loads(line) for line in outcome.output.splitlines() if line.startswith("{")]
    assert [line["policy"] for line in lines] == ["round_robin", "sal"]
    assert all(line["completed"] + line["dropped"] == 40 for line in lines)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 80
    assert {"policy", "replica_id", "ttft_s", "e2e_s", "output_tokens", "tpot_s"} <= set(records[0])
