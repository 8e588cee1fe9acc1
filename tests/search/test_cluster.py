"""The search on a Ray cluster: two nodes on this machine (loopback only), one sweep across both.

Ray's own `cluster_utils.Cluster` starts a head node and a worker node of one CPU each, so two
concurrent one-CPU trials must land on different nodes. The check is what a real cluster needs:
trials ran on both nodes, the backbone ran only in the driver (the second node got the cached
tokens through the object store instead of recomputing them), and every trial's results landed
in the one run folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# Read when ray is first imported: nodes then advertise 127.0.0.1, not the machine's address.
# Another test module may have imported ray first: see the `cluster` fixture.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import make_dataset  # noqa: E402

from sweeper.data.cache import load_train_data  # noqa: E402
from sweeper.model.backbone import create_backbone  # noqa: E402
from sweeper.rundir.layout import EXPERIMENT_DIR, TRIALS_CSV  # noqa: E402
from sweeper.search.driver import run_search
from sweeper.search.options import SearchOptions  # noqa: E402
from sweeper.search.space import load_space  # noqa: E402
from sweeper.training.config import LabelMode  # noqa: E402

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

LOOPBACK = "127.0.0.1"
SMALL = {"image_height": 56, "image_width": 112}  # trial config overrides
SMALL_SIZE = {"height": 56, "width": 112}  # the same size for load_train_data
NODE = {"num_cpus": 1, "node_ip_address": LOOPBACK, "object_store_memory": 100 * 2**20}


@pytest.fixture(scope="module")
def cluster(request):
    """A head node and one worker node, one CPU each; the driver connected; all shut down after the module."""
    assert not ray.is_initialized(), "another test module left Ray running"
    patch = pytest.MonkeyPatch()
    # Ray records the newest cluster's address in <temp dir>/ray/ray_current_cluster, and a plain
    # ray.init() anywhere on the machine joins that cluster. A private temp dir keeps this test's
    # cluster invisible to other processes' local Ray (and theirs to it); short, for socket paths.
    temp_root = tempfile.mkdtemp(prefix="raycl-", dir="/tmp")
    patch.setenv("RAY_TMPDIR", temp_root)
    # ray.init(address="127.0.0.1:port") swaps a loopback host for the machine's address unless
    # Ray's cluster mode was off when ray was first imported. When another module (test_tune)
    # imported ray before this file set the variable, the driver then dials an address nothing
    # listens on and hangs; the flag the variable sets is patched to what it would have been.
    patch.setattr(ray._private.ray_constants, "ENABLE_RAY_CLUSTER", False)
    started: list[Cluster] = []

    def stop() -> None:  # registered before the first node starts, so a failed start still cleans up
        ray.shutdown()
        for c in started:
            c.shutdown()
        patch.undo()
        shutil.rmtree(temp_root, ignore_errors=True)

    request.addfinalizer(stop)
    c = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    started.append(c)
    c.add_node(**NODE)
    c.wait_for_nodes()
    ray.init(address=c.address, _node_ip_address=LOOPBACK, log_to_driver=False)
    return c


def write_space(path: Path) -> Path:
    """Four trials of two epochs; ASHA may stop one after epoch 1."""
    path.write_text("""
metric: val_iou
mode: max
trials: 4
max_concurrent: 2
asha: {max_epochs: 2, grace_period: 1, reduction_factor: 2}
fixed: {epochs: 2, train_metrics: false}
params:
  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-2}
  optimizer: {type: categorical, choices: [sgd, adam]}
  momentum: {type: uniform, low: 0.8, high: 0.99, when: {optimizer: [sgd]}}
""")
    return path


@pytest.mark.slow
def test_a_sweep_spreads_over_both_nodes_with_tokens_from_the_driver(cluster, tmp_path):
    nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    assert {n["NodeManagerAddress"] for n in nodes.values()} == {LOOPBACK}  # both nodes on loopback

    root = make_dataset(tmp_path / "data", train=4, val=2)
    backbone = create_backbone("random_vits14")
    data = load_train_data(root, backbone, **SMALL_SIZE, label_mode=LabelMode.PHASE1,
                           cache_root=tmp_path / "cache", show_progress=False)
    assert backbone.forward_count == 6  # every image once, in the driver

    space = load_space(write_space(tmp_path / "space.yaml"))
    opts = SearchOptions(name="cluster", out_root=tmp_path, trials=4, max_concurrent=2, gpus_per_trial=0.0,
                         cpus_per_trial=1.0, seed=0, address=cluster.address)
    table = run_search(space, data, opts, trial_overrides=SMALL, progress=False)

    assert backbone.forward_count == 6  # no trial, on either node, ran the backbone again
    run = tmp_path / "cluster"
    saved = pd.read_csv(run / TRIALS_CSV)
    assert len(saved) == 4 and len(table) == 4
    assert set(saved.status) == {"TERMINATED"}
    assert set(saved.node_id) == set(nodes)  # both the head and the worker node ran trials
    trial_dirs = sorted((run / EXPERIMENT_DIR).glob("trial_main_*"))
    assert len(trial_dirs) == 4
    for d in trial_dirs:
        assert (d / "result.json").stat().st_size > 0  # written by the driver's logger
        # checkpoints are written by the trial itself, on whichever node ran it: one kept per trial
        assert len(list(d.glob("checkpoint_*/state.pt"))) == 1
