"""The example deployment files stay valid."""

from pathlib import Path

from replica_agent.config import load_agent_config
from router.config import load_router_config
from router.service.local_fleet import load_fleet

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_example_files_load() -> None:
    agent = load_agent_config(DEPLOY / "agent.example.yaml", {})
    assert agent.executor.value == "sim" and agent.engine["max_num_seqs"] == 256
    router = load_router_config(DEPLOY / "router.example.yaml")
    assert [r.transport for r in router.replicas] == ["agent", "agent", "http"]
    fleet = load_fleet(DEPLOY / "fleet.example.yaml")
    assert sum(group.count for group in fleet.replicas) == 8
