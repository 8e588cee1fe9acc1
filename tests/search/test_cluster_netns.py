"""A real two-node Ray cluster started with the `ray start` CLI, token authentication on, and a node lost
mid-sweep: the README's cluster commands, run as a user runs them.

Ray 2.60 adds no second node bound to 127.0.0.1 only, and this machine's own interfaces are not to be bound.
So the test builds two network namespaces joined by a veth pair with private addresses (NET.1 and NET.2):
inside them "every interface" is a namespace's loopback and its end of the pair, which nothing outside the
two namespaces reaches. The head (`ray start --head`) and the driver (`sweeper search --address`) run in
namespace A, the worker (`ray start --address`) in namespace B. Every process the test starts lives in one of
the namespaces, so `ip netns pids` names exactly what to kill (never `ray stop`: it stops every Ray
instance on the machine), and the namespaces are deleted at the end, whatever happened.

One sweep shows three things (each Ray start costs tens of seconds on a small machine):
- a node joining mid-sweep gets trials: the sweep (2 trials at once) starts on a 1-CPU head alone, the worker
  is added once trial 0 has run an epoch, and the waiting trial runs on the worker (trial 0's process is
  paused meanwhile: see the comment there);
- a node lost mid-trial loses nothing: once the worker's trial has checkpointed, every process of namespace
  B is killed with SIGKILL (a lost machine); the trial continues from that checkpoint on the head, each epoch
  recorded once;
- trial 0 (the phase-1 point) equals a local `sweeper baseline` run of the same data.

Where `ip netns` is not permitted (not root, no CAP_NET_ADMIN) the test skips with the reason, or fails when
SWEEPER_REQUIRE_NETNS=1 (CI: .ci/run sets it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, make_dataset

RAY = Path(sys.executable).with_name("ray")
NET = "10.231.0"  # a private /24 that exists only inside the test's two namespaces
HEAD_IP, WORKER_IP = f"{NET}.1", f"{NET}.2"
PORT = 6379  # Ray's default: free inside a namespace of our own
TOLERANCE = 1e-6  # a trial's metrics against the same config trained elsewhere (tests/search/test_tune.py's)

# The smoke space's params, 2 trials at once, but 3 epochs and no ASHA rung before the last: the worker's
# trial is lost after its first or second epoch, and must not be stopped there by ASHA.
EPOCHS, TRIALS = 3, 4
SPACE = f"""
metric: val_iou
mode: max
trials: {TRIALS}
max_concurrent: 2
asha: {{max_epochs: {EPOCHS}, grace_period: {EPOCHS}, reduction_factor: 2}}
fixed: {{epochs: {EPOCHS}, train_metrics: false}}
params:
  lr: {{type: loguniform, low: 1.0e-5, high: 1.0e-2}}
  optimizer: {{type: categorical, choices: [sgd, adam]}}
  momentum: {{type: uniform, low: 0.8, high: 0.99, when: {{optimizer: [sgd]}}}}
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def netns_problem() -> str | None:
    """Why this machine cannot build network namespaces for the test; None when it can."""
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if os.geteuid() != 0:
        return "ip netns needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); this test runs as uid " + str(os.geteuid())
    probe = f"swp{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add is not permitted here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


def kill_namespace(name: str) -> None:
    """SIGKILL every process inside namespace `name`, until none is left (a lost machine)."""
    for _ in range(50):
        pids = [int(p) for p in ip("netns", "pids", name, check=False).stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes left in namespace {name}")


@pytest.fixture
def namespaces():
    """Namespaces A (NET.1) and B (NET.2) joined by a veth pair; every process in them killed and both
    deleted afterwards."""
    problem = netns_problem()
    if problem:
        if os.environ.get("SWEEPER_REQUIRE_NETNS") == "1":
            pytest.fail(f"SWEEPER_REQUIRE_NETNS=1 but {problem}")
        pytest.skip(problem)
    tag = f"sw{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    made: list[str] = []
    try:
        for name in (a, b):
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        ip("link", "add", f"{tag}va", "netns", a, "type", "veth", "peer", "name", f"{tag}vb", "netns", b)
        for name, dev, addr in ((a, f"{tag}va", HEAD_IP), (b, f"{tag}vb", WORKER_IP)):
            ip("-n", name, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", name, "link", "set", dev, "up")
        yield a, b
    finally:
        for name in made:
            kill_namespace(name)
            ip("netns", "del", name, check=False)  # the veth pair goes with its namespaces


def token_env(token_file: Path) -> dict[str, str]:
    """This process's environment for a cluster process: the token's file, and this checkout importable by
    the Ray workers (they unpickle the trainable), with no Ray setting inherited from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "SWEEPER_CACHE"))}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return {**env, "PYTHONPATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def in_ns(name: str, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(["ip", "netns", "exec", name, *argv], env=env, stdout=out, stderr=subprocess.STDOUT,
                            cwd=ROOT)


def wait_for(what: str, check, timeout: float, *procs: subprocess.Popen, logs: tuple[Path, ...] = ()):
    deadline = time.time() + timeout
    while True:
        value = check()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                tails = "\n".join(f"--- {x}:\n{x.read_text()[-3000:]}" for x in logs if x.is_file())
                raise AssertionError(f"waiting for {what}: {p.args} exited {p.returncode}\n{tails}")
        if time.time() > deadline:
            tails = "\n".join(f"--- {x}:\n{x.read_text()[-3000:]}" for x in logs if x.is_file())
            raise AssertionError(f"{what}: not within {timeout:.0f} s\n{tails}")
        time.sleep(0.5)


def trial_processes(name: str) -> list[int]:
    """The Ray Tune trial processes (`ray::ImplicitFunc...`, not idle workers) inside namespace `name`."""
    found = []
    for pid in ip("netns", "pids", name, check=False).stdout.split():
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::ImplicitFunc"):
            found.append(int(pid))
    return found


def epoch_lines(exp_dir: Path) -> list[tuple[Path, dict]]:
    """Every epoch line every trial folder holds, as written (a repeated epoch stays repeated)."""
    out = []
    for f in sorted(exp_dir.glob("*/epochs.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                try:
                    out.append((f.parent, json.loads(line)))
                except json.JSONDecodeError:  # a line being written
                    pass
    return out


@pytest.mark.slow
def test_a_node_added_mid_sweep_runs_trials_and_a_lost_node_loses_none(namespaces, tmp_path):
    ns_a, ns_b = namespaces
    started = time.time()
    # The token: generated once on the head (into HOME/.ray/auth_token; a private HOME here, not the user's),
    # copied to each node with mode 600 (Ray writes it 644), named by RAY_AUTH_TOKEN_PATH in every process.
    home = tmp_path / "home"
    home.mkdir()
    gen_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    subprocess.run([str(RAY), "get-auth-token", "--generate"], env={**gen_env, "HOME": str(home)}, check=True,
                   capture_output=True, timeout=120)
    head_token, worker_token = tmp_path / "head_token", tmp_path / "worker_token"
    for copy in (head_token, worker_token):
        shutil.copyfile(home / ".ray" / "auth_token", copy)
        copy.chmod(0o600)
    head_env, worker_env = token_env(head_token), token_env(worker_token)
    temp_a = tempfile.mkdtemp(prefix="rns-a-", dir="/tmp")  # short: Ray's socket paths live under it
    temp_b = tempfile.mkdtemp(prefix="rns-b-", dir="/tmp")
    node = ["--num-cpus", "1", "--object-store-memory", str(150 * 2**20), "--disable-usage-stats", "--block"]
    logs = {k: tmp_path / f"{k}.log" for k in ("head", "worker", "driver")}
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    data = make_dataset(tmp_path / "data", train=4, val=2)
    common = ["--data", str(data), "--backbone", "random_vits14", "--cache-dir", str(tmp_path / "cache")]
    try:
        head = in_ns(ns_a, [str(RAY), "start", "--head", "--node-ip-address", HEAD_IP, "--port", str(PORT),
                            "--temp-dir", temp_a, "--include-dashboard", "false", *node], head_env, logs["head"])
        wait_for("the head", lambda: "Ray runtime started" in logs["head"].read_text(), 180, head,
                 logs=(logs["head"],))
        run = tmp_path / "results" / "ns"
        driver = in_ns(ns_a, [sys.executable, "-m", "sweeper", "search", *common, "--space", str(space),
                              "--address", f"{HEAD_IP}:{PORT}", "--name", "ns",
                              "--out", str(tmp_path / "results")], head_env, logs["driver"])
        exp = run / "ray"
        # trial 0 runs on the head (the only node); the next waits for a CPU
        first = wait_for("trial 0's first epoch", lambda: epoch_lines(exp), 300, driver, head,
                         logs=tuple(logs.values()))
        head_node = first[0][1]["node_id"]
        # Trial 0's process on the head is paused while the worker joins and runs the next trial: on a small,
        # loaded machine a trial of this tiny set ends before a new node's first trial process has started,
        # and Ray Tune would hand the next trial to the head's freed process (reuse_actors) every time.
        paused = trial_processes(ns_a)
        assert len(paused) == 1, paused
        os.kill(paused[0], signal.SIGSTOP)
        try:
            worker = in_ns(ns_b, [str(RAY), "start", "--address", f"{HEAD_IP}:{PORT}", "--node-ip-address",
                                  WORKER_IP, "--temp-dir", temp_b, *node], worker_env, logs["worker"])

            def worker_checkpointed():
                for folder, r in epoch_lines(exp):
                    # the driver's logger wrote its result (result.json): Ray knows that epoch's checkpoint
                    result = folder / "result.json"
                    if r.get("node_id") != head_node and result.is_file() and result.stat().st_size > 0:
                        return folder, r["node_id"]
                return None

            moved_dir, worker_node = wait_for("a trial checkpointed on the worker", worker_checkpointed, 300,
                                              driver, worker, logs=tuple(logs.values()))
            kill_namespace(ns_b)  # the worker's machine is lost
        finally:
            os.kill(paused[0], signal.SIGCONT)
        worker.wait(timeout=30)
        assert driver.wait(timeout=600) == 0, logs["driver"].read_text()[-5000:]
        sweep_s = time.time() - started
        # the same cached tokens as the sweep (its default cache type, float16)
        baseline = subprocess.run([sys.executable, "-m", "sweeper", "-q", "baseline", *common, "--epochs",
                                   str(EPOCHS), "--cache-dtype", "float16", "--out", str(tmp_path / "baseline")],
                                  env=head_env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
        assert baseline.returncode == 0, baseline.stderr[-3000:]
    finally:
        kill_namespace(ns_a)
        kill_namespace(ns_b)
        shutil.rmtree(temp_a, ignore_errors=True)
        shutil.rmtree(temp_b, ignore_errors=True)

    trials = pd.read_csv(run / "trials.csv")
    progress = logs["driver"].read_text()
    assert trials.status.tolist() == ["TERMINATED"] * TRIALS, trials[["trial", "status", "error"]].to_string()
    lines = epoch_lines(exp)
    numbers = {f: json.loads((f / "config.json").read_text())["config"]["trial_number"] for f, _ in lines}
    seen = [(numbers[f], r["epoch"]) for f, r in lines]
    assert sorted(seen) == sorted(set(seen))  # no epoch recorded twice
    assert sorted(seen) == [(t, e) for t in range(TRIALS) for e in range(1, EPOCHS + 1)]  # every epoch recorded
    assert {r["node_id"] for _, r in lines} == {head_node, worker_node}  # the added node ran trials
    moved = numbers[moved_dir]
    nodes = [r["node_id"] for f, r in sorted(lines, key=lambda x: x[1]["epoch"]) if f == moved_dir]
    lost_after = nodes.count(worker_node)  # the epochs it ran on the worker, then the rest on the head
    assert 1 <= lost_after < EPOCHS and nodes == [worker_node] * lost_after + [head_node] * (EPOCHS - lost_after)
    walls = [r["wall_seconds"] for f, r in sorted(lines, key=lambda x: x[1]["epoch"]) if f == moved_dir]
    assert walls == sorted(walls)  # its wall time summed over both nodes
    row = trials.set_index("trial").loc[moved]
    assert row.node_id == head_node and row.epochs_run == EPOCHS
    assert row.node_ids == f"{worker_node} {head_node}" and row.node_losses == 1  # trials.csv says it moved
    assert (trials.node_losses > 0).sum() == 1
    assert re.search(rf"trial +{moved} moved to another node after its node was lost, from epoch {lost_after} ",
                     progress), progress[-3000:]
    # trial 0 is the phase-1 point: what a local baseline run of the same data gives, epoch by epoch
    history = pd.read_csv(run / "history.csv")
    reference = [json.loads(x) for x in (tmp_path / "baseline" / "metrics.jsonl").read_text().splitlines()]
    t0 = history[history.trial == 0].sort_values("epoch")
    assert t0.val_iou.tolist() == pytest.approx([r["val_iou"] for r in reference], abs=TOLERANCE)
    assert t0.val_loss.tolist() == pytest.approx([r["val_loss"] for r in reference], abs=TOLERANCE)
    print(f"sweep over the two namespaces: {sweep_s:.0f} s")
