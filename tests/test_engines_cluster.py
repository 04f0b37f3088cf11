"""The README's Ray cluster form, as written: ``ray start --head`` (a separate Ray cluster of 2 CPUs on this
machine), then ``mimic-ils build --engine ray --ray-address HOST:PORT`` from another process; the output is the
bytes of a local build. The cluster's processes are stopped by the session folder they run under (``ray stop``
would stop every Ray of the machine)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mimic_ils.orchestration import BuildConfig, build

sys.path.insert(0, str(Path(__file__).parent))
from _build_helpers import folder_bytes  # noqa: E402
from _cohort import make_cohort  # noqa: E402

pytest.importorskip("ray", reason="the [ray] extra is not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_cluster(session: str) -> None:
    import psutil

    found = [process for process in psutil.process_iter(["cmdline"])
             if session in " ".join(process.info["cmdline"] or ())]
    victims = {process.pid: process for process in found}
    for process in found:
        try:
            victims.update({child.pid: child for child in process.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for process in victims.values():
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass


@pytest.fixture()
def ray_cluster():
    """``ray start --head`` on loopback with its own session folder (short: Ray's socket paths are limited)."""
    session = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    port = _free_port()
    ray_cli = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    started = subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                              "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "false",
                              "--temp-dir", session, "--disable-usage-stats"],
                             env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        _stop_cluster(session)


def test_build_on_a_ray_start_cluster_as_the_readme_says(ray_cluster, tmp_path_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_ILS_CODE_COMMIT", "0" * 40)
    cohort = make_cohort(tmp_path_factory, n_studies=10, seed=5)
    reference = tmp_path / "reference"
    build(cohort, reference, config=BuildConfig(vision="phantom"), progress=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mimic_ils", "build", "--engine", "ray", "--ray-address", ray_cluster,
               "--mimic-root", str(cohort), "--out", str(out), "--backends", "phantom", "--no-progress"]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "studies: 10 computed" in result.stdout
    assert folder_bytes(out) == folder_bytes(reference)
