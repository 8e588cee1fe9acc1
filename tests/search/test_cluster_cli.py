"""A Ray cluster started as docs/cluster.md says, with the `ray start` CLI, token authentication on (Ray >= 2.59's
default), joined by `sweeper search --address`: without the token, one line naming the fix; with it, a sweep.

The cluster is one head node bound to 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). A second node
started with `ray start --address` is not: Ray 2.60's CLI refuses to add a node with that setting, and without
it the GCS and the raylets listen on every interface. Trials over two nodes on loopback are
tests/search/test_cluster.py's (Ray's cluster_utils). The test gives the cluster a token of its own (a file named by
RAY_AUTH_TOKEN_PATH) and starts the head with `ray start --block` and a private temp dir: ending that process
stops exactly the Ray processes it started.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, make_dataset

RAY = Path(sys.executable).with_name("ray")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Ray token setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    return {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node of two CPUs bound to 127.0.0.1, token auth on: (address, the token's environment)."""
    tmp = tmp_path_factory.mktemp("raycli")
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    temp_dir = tempfile.mkdtemp(prefix="rcli-", dir="/tmp")  # short: Ray's socket paths live under it
    port = free_port()
    address = f"{LOOPBACK}:{port}"
    node = ["--num-cpus", "2", "--node-ip-address", LOOPBACK, "--object-store-memory", str(150 * 2**20),
            "--disable-usage-stats", "--block"]
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        log = open(tmp / f"ray-start-{len(started)}.log", "w")
        proc = subprocess.Popen([str(RAY), "start", *args, *node], env=clean_env(**auth), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = Path(log.name)
        started.append(proc)
        return proc

    try:
        head = start("--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard", "false",
                     "--min-worker-port", "20000", "--max-worker-port", "20999")
        wait_for_nodes(address, 1, auth, head)
        yield address, auth
    finally:
        for proc in reversed(started):  # `ray start --block` stops its own Ray processes when it ends
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what that `ray start` started
                proc.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_nodes(address: str, n: int, auth: dict[str, str], node: subprocess.Popen, timeout: float = 120) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.time() + timeout
    while True:  # the head's GCS listening first: ray.init on a port nobody answers yet waits long
        assert node.poll() is None, f"ray start failed: {node.log.read_text()[-2000:]}"
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            assert time.time() < deadline, f"nothing listens at {address}"
            time.sleep(0.5)
    code = ("import ray, sys, time\n"
            f"ray.init(address={address!r}, log_to_driver=False)\n"
            f"t = time.time() + {timeout}\n"
            f"while sum(1 for x in ray.nodes() if x['Alive']) < {n} and time.time() < t: time.sleep(1)\n"
            f"sys.exit(0 if sum(1 for x in ray.nodes() if x['Alive']) >= {n} else 1)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(**auth), capture_output=True, text=True,
                          timeout=timeout + 60)
    assert proc.returncode == 0, f"the cluster did not reach {n} node(s): {proc.stderr[-2000:]}"


def search(tmp_path: Path, address: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    data = make_dataset(tmp_path / "data", train=4, val=2)
    return subprocess.run([sys.executable, "-m", "sweeper", "-q", "search", "--data", str(data), "--backbone",
                           "random_vits14", "--space", "smoke", "--address", address, "--name", "cl", "--out",
                           str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache"), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("env, why", [({"RAY_AUTH_MODE": "disabled"}, "sent no token"),
                                      ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "is wrong")])
def test_a_driver_without_the_token_is_one_line_naming_the_fix(cluster, tmp_path, env, why):
    address, _ = cluster
    started = time.time()
    proc = search(tmp_path, address, clean_env(**env), "--trials", "2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "gcs_client" not in proc.stderr, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "token authentication" in errors[0] and why in errors[0], proc.stderr[-3000:]
    for name in ("RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "ray get-auth-token"):
        assert name in errors[0]
    assert time.time() - started < 120  # refused, not a hang
    assert not (tmp_path / "results" / "cl").exists()  # refused before any work


@pytest.mark.slow
def test_a_sweep_joins_the_cluster_with_its_token(cluster, tmp_path):
    address, auth = cluster
    proc = search(tmp_path, address, clean_env(**auth), "--trials", "2", "--max-concurrent", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "cl" / "trials.csv")
    assert len(table) == 2 and set(table.status) == {"TERMINATED"} and table.node_id.nunique() == 1
