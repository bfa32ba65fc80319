"""``fleetroute agent`` as users run it: flags, config files, start-up banner, SIGTERM drain."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

from fleetroute.cli import main
from protos import replica_pb2 as pb
from protos import replica_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "quantum"], "Invalid value for '--executor'"),
        (["--gpu", "b200-999gb"], "unknown GPU profile 'b200-999gb'"),
        (["--executor", "remote"], "needs --remote-url"),
        (["--output-lengths", "gamma:1"], "unknown output length distribution"),
        (["--grpc-port", "70000"], "Invalid value for '--grpc-port'"),
    ],
)
def test_bad_flags_get_one_clear_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["agent", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_config_files_get_one_clear_line(tmp_path: Path) -> None:
    bad_yaml = tmp_path / "a.yaml"
    bad_yaml.write_text("executor: [sim\n")
    unknown_key = tmp_path / "b.yaml"
    unknown_key.write_text("executor: sim\ngpus: h100-80gb\n")
    bad_value = tmp_path / "c.yaml"
    bad_value.write_text("snapshot_interval_s: -1\n")
    for path, message in (
        (bad_yaml, "not valid YAML"),
        (unknown_key, "gpus: Extra inputs are not permitted"),
        (bad_value, "snapshot_interval_s"),
        (tmp_path / "missing.yaml", "cannot read"),
    ):
        result = CliRunner().invoke(main, ["agent", "--config", str(path)])
        assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_the_agent_serves_then_drains_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("gpu: h100-80gb\ndrain_timeout_s: 5\nreplica_id: edge-1\ntier: edge\n")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetroute",
            "agent",
            "--config",
            str(config),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert process.stdout is not None
        banner = "".join(process.stdout.readline() for _ in range(3))
        found = re.search(r"gRPC\s+127\.0\.0\.1:(\d+)", banner)
        assert found is not None, banner
        port = int(found.group(1))
        assert "edge-1" in banner and "h100-80gb" in banner
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ReplicaStub(channel)
            assert stub.Info(pb.InfoRequest(), timeout=10).tier == "edge"
            stream = stub.Generate(
                pb.GenerateRequest(
                    model="llama-3.1-8b",
                    prompt="hi there",
                    params=pb.SamplingParams(max_tokens=64, ignore_eos=True),
                ),
                timeout=30,
            )
            first = next(stream)
            process.send_signal(signal.SIGTERM)
            rest = list(stream)  # in-flight work finishes during the drain
        assert first.token_ids and rest[-1].finish_reason == "length"
        assert sum(len(c.token_ids) for c in [first, *rest]) == 64
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
