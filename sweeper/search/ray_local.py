"""Ray for a sweep: the environment Ray reads at import, a local Ray started on loopback (or a cluster joined),
its object store sized for the cached arrays, and the checks that turn what Ray would wait on for ever (an
address nobody answers, a trial no node can hold, a dashboard without its packages, a full disk) into one
line before or after the work.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Iterator

from sweeper.errors import SweeperError, one_line
from sweeper.search.options import SearchOptions
from sweeper.training.device import gpu_count

log = logging.getLogger(__name__)


def ray_environment() -> None:
    """Settings Ray reads when it is first imported: call before any `import ray` in the process."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # then a local Ray binds 127.0.0.1 only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # verbose=0 then really is quiet; ProgressPrinter reports
    # one checkpoint per epoch forces a state snapshot each time; that is intended (resume), not a problem
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)


def object_store_bytes(data_bytes: int, *, memory_bytes: int) -> int:
    """A local Ray's object store size: the sweep's cached arrays plus headroom, at least Ray's default
    (30% of memory), at most 60% of memory (beyond that the arrays spill to disk; see --cache-dtype float16)."""
    want = int(data_bytes * 1.2) + 256 * 2**20
    return min(max(want, int(0.3 * memory_bytes)), int(0.6 * memory_bytes))


def start_ray(opts: SearchOptions, data_bytes: int = 0) -> None:
    """Join --address, or start a local Ray on loopback only (dashboard off unless asked for), its object
    store sized to hold `data_bytes` of cached arrays."""
    ray_environment()
    import ray

    if ray.is_initialized():
        return
    if opts.address:
        join_cluster(opts.address)
        return
    num_gpus = gpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    store = object_store_bytes(data_bytes, memory_bytes=memory)
    if data_bytes * 1.2 > store:
        log.warning("the cached arrays (%.2f GB) exceed the object store Ray can have here (%.2f GB): they will "
                    "spill to disk; --cache-dtype float16 halves them", data_bytes / 1e9, store / 1e9)
    # address="local": always a fresh private instance, never a cluster someone else left running here
    with _api_server(opts.dashboard):
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=num_gpus, include_dashboard=opts.dashboard,
                 object_store_memory=store, logging_level=logging.WARNING, log_to_driver=False)
    from sweeper.search.reaper import watch_driver

    watch_driver()  # this local Ray's agents would outlive a kill -9 of this process by a minute


AUTH_FIX = ("give this driver the cluster's token: run the sweep with RAY_AUTH_MODE=token and the token in "
            "~/.ray/auth_token, in a file named by RAY_AUTH_TOKEN_PATH or in RAY_AUTH_TOKEN (`ray get-auth-token` "
            "on the head prints it); docs/cluster.md")


@contextlib.contextmanager
def _api_server(wanted: bool) -> Iterator[None]:
    """While a local Ray starts: no dashboard process unless `wanted`.

    With include_dashboard=False, Ray 2.60 still starts `dashboard.py` (its API server for jobs, state and
    usage statistics, on port 8265); a sweep uses none of them. Ray's node start is told to skip it, only
    for this start and only when the dashboard was not asked for; a Ray without that step starts as it is.
    """
    from ray._private import node

    original = getattr(node.Node, "start_api_server", None)
    if wanted or original is None:
        yield
        return

    def skip(self, *args, **kwargs):  # Ray handles a node without one: no dashboard URL, nothing else
        log.debug("Ray's dashboard process not started (no --dashboard)")

    node.Node.start_api_server = skip
    try:
        yield
    finally:
        node.Node.start_api_server = original


def join_cluster(address: str) -> None:
    """ray.init(address) with Ray's C++ connection log kept off the terminal: a cluster that refuses this driver
    (token authentication, most often) is one line naming the fix, not 20 log lines and a traceback."""
    import tempfile

    ray_environment()
    import ray

    if ray.is_initialized():
        return
    with tempfile.TemporaryFile(mode="w+b") as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)  # the gcs_client.cc lines are written by C++ straight to fd 2
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            error = None
        except Exception as e:  # ConnectionError, AuthenticationError (no token found), RuntimeError...
            error = e
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    if error is None:
        sys.stderr.write(text)  # nothing went wrong: what Ray said is shown as it would have been
        return
    if "Unauthenticated" in text or "InvalidAuthToken" in text or "AuthenticationError" in type(error).__name__:
        sent = "the token this driver sent is wrong" if os.environ.get("RAY_AUTH_MODE") == "token" \
            else "this driver sent no token"
        auth = f"it uses token authentication and {sent}"
        raise SweeperError(f"--address {address}: the Ray cluster refused this driver ({auth}); {AUTH_FIX}") from None
    last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "")
    raise SweeperError(f"--address {address}: the Ray cluster there refused this driver ({one_line(error)}"
                       f"{'; Ray said: ' + one_line(last) if last else ''})") from None


def cluster_nodes(address: str | None) -> list[dict[str, float]]:
    """The resources of every node trials can run on: this machine's for a local Ray (`local_nodes`), the
    live nodes of the cluster at `address` (joined here) otherwise."""
    if not address:
        return local_nodes()
    join_cluster(address)
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def trial_resources(nodes: list[dict[str, float]], *, device: str, gpus_per_trial: float | None,
                    max_concurrent: int | None, default_concurrent: int) -> tuple[float, int]:
    """A sweep's GPU share per trial and trials at once, defaulted from the cluster's nodes, not the driver's
    machine: a quarter GPU per trial wherever a node has a GPU, as many at once as the GPUs hold.

    `--device cpu` with a GPU share, or `--device cuda` without one, is refused in one line."""
    if device == "cpu" and gpus_per_trial:
        raise SweeperError(f"--device cpu with --gpus-per-trial {gpus_per_trial:g}: each trial would hold a GPU "
                           f"share and train on the CPU; pass --gpus-per-trial 0 (the default with --device cpu)")
    has_gpu = any(n.get("GPU", 0) > 0 for n in nodes)
    if device.startswith("cuda") and not has_gpu:
        raise SweeperError(f"--device {device}: no node of the Ray cluster has a CUDA GPU (torch sees none here); "
                           f"use --device cpu or auto")
    gpus = (gpus_per_trial if gpus_per_trial is not None else 0.25 if has_gpu and device != "cpu" else 0.0)
    if device.startswith("cuda") and gpus <= 0:
        raise SweeperError(f"--device {device} with --gpus-per-trial {gpus:g}: Ray would grant the trials no GPU; "
                           f"pass a share such as --gpus-per-trial 0.25, or --device auto")
    if max_concurrent:
        return gpus, max_concurrent
    if gpus <= 0:
        return gpus, default_concurrent
    # trials each node's GPUs hold: a fractional share never spans two GPUs, so 0.4 fits twice on one GPU
    per_gpu, whole = (int(1 / gpus + 1e-9), 1) if gpus < 1 else (1, int(gpus))
    return gpus, max(1, sum(int(n.get("GPU", 0)) // whole * per_gpu for n in nodes))


def check_dashboard(opts: SearchOptions) -> None:
    """Refuse --dashboard, before any work, where this Ray lacks the dashboard's packages (a plain `ray`
    install, not `ray[default]`): ray.init would fail after the cache is built, with a traceback."""
    if not opts.dashboard or opts.address:
        return
    ray_environment()
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None:
        raise SweeperError(f"--dashboard: this Ray lacks the dashboard's packages ({missing}); install them with "
                           f"pip install 'ray[default]=={_ray_version()}', or run without --dashboard")


def _ray_version() -> str:
    import ray

    return ray.__version__


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}{'' if n == 1 else 's'}"


def missing_resources(cpus: float, gpus: float, nodes: list[dict[str, float]]) -> str | None:
    """Why no node of a cluster can run a trial of `cpus` CPUs and `gpus` GPUs (Ray would wait forever);
    None when one can. `nodes` are Ray resource dicts ({"CPU": 8.0, "GPU": 1.0, ...}), one per live node."""
    if any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        return None
    total_cpu, total_gpu = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    enough_gpu = any(n.get("GPU", 0) >= gpus for n in nodes)
    enough_cpu = any(n.get("CPU", 0) >= cpus for n in nodes)
    asked = (f"--gpus-per-trial {gpus:g}" if not enough_gpu else f"--cpus-per-trial {cpus:g}" if not enough_cpu
             else f"--cpus-per-trial {cpus:g} with --gpus-per-trial {gpus:g}")
    has = (f"{_count(total_cpu, 'CPU')} and {'no GPU' if not total_gpu else _count(total_gpu, 'GPU')} in all"
           + (f", largest node: {_count(largest.get('CPU', 0), 'CPU')}, {_count(largest.get('GPU', 0), 'GPU')}"
              if len(nodes) > 1 else ""))
    want = _count(cpus, "CPU") + (f" and {_count(gpus, 'GPU')}" if gpus else "")
    return f"{asked}: no node of the Ray cluster has {want} for one trial (it has {has}); ask for less"


def check_resources(opts: SearchOptions, nodes: list[dict[str, float]] | None = None) -> None:
    """Refuse a per-trial request that no node can grant, in one line, before any trial starts.

    `nodes` defaults to the live nodes of the Ray cluster this process joined.
    """
    if nodes is None:
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    problem = missing_resources(opts.cpus_per_trial, opts.gpus_per_trial, nodes)
    if problem:
        raise SweeperError(problem)


def local_nodes() -> list[dict[str, float]]:
    """The resources a local Ray started by `start_ray` will have: this machine's CPUs and GPUs."""
    return [{"CPU": float(os.cpu_count() or 1),
             "GPU": float(gpu_count())}]


def check_address(address: str, timeout: float = 15.0) -> None:
    """Fail in one line when nothing answers at --address; ray.init would retry for ever.

    'auto' (Ray finds a cluster started on this machine) is left to Ray.
    """
    import socket

    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise SweeperError(f"--address '{address}': expected HOST:PORT (e.g. 10.0.0.5:6379) or 'auto'")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise SweeperError(f"--address {address}: no Ray cluster answers there ({reason} within {timeout:g} s); "
                           f"start one with `ray start --head` or check the address") from None


def disk_full(error: BaseException) -> str | None:
    """Why `error` (or an error it was raised from) is a full disk, in a few words; None when it is not one.

    Ray passes a trial's OSError on as text inside RayTaskError/TuneError, and SQLite (the study) raises its own
    OperationalError, so the messages are read as well as the errno."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(e.errno)
        text = str(e)
        for marker in ("No space left on device", "database or disk is full", "Disk quota exceeded"):
            if marker in text:
                return marker
        e = e.__cause__ or e.__context__
    return None
