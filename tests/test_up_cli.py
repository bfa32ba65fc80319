"""``fleetroute up`` as a user runs it: a fleet and a router that answer, then a clean Ctrl-C."""

import re
import signal
import subprocess
import sys
from pathlib import Path

import openai
import pytest
from click.testing import CliRunner

from fleetroute.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_up_serves_the_openai_api_and_stops_cleanly_on_ctrl_c() -> None:
    command = [sys.executable, "-m", "fleetroute", "up", "--port", "0", "--grpc-port", "0", "--replicas", "3",
               "--speedup", "10"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        assert process.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = process.stdout.readline()
            assert line, banner
            banner += line
        found = re.search(r"OpenAI API\s+(http://\S+/v1)", banner)
        assert found is not None and "3 replicas" in banner
        client = openai.OpenAI(base_url=found.group(1), api_key="none", max_retries=0, timeout=20)
        answer = client.chat.completions.create(
            model="llama-3.1-8b", messages=[{"role": "user", "content": "Hello!"}], max_tokens=16
        )
        assert answer.choices[0].message.content and answer.usage is not None
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert "fleet stopped" in output and "Traceback" not in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "h100-80gb,tpu-v9"], "unknown GPU profile(s) tpu-v9"),
        (["--policy", "fastest"], "Invalid value for '--policy'"),
        (["--fleet", "/nonexistent/fleet.yaml"], "cannot read"),
    ],
)
def test_up_refuses_bad_flags_in_one_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["up", *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_serve_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("replicas:\n  - {address: 'a:1', id: x}\n  - {address: 'b:1', id: x}\n")
    result = CliRunner().invoke(main, ["serve", "--config", str(config)])
    assert result.exit_code != 0 and "replica ids must be unique: x" in result.output
