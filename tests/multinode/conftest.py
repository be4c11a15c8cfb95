"""One simulated multi-node cluster per test session (cluster/sim_cluster.py): a CPU head node,
GPU nodes of one GPU each, the embedded S3 server, Serve with the Tessera app over the ``sim``
model, a gRPC client. These tests carry the ``multinode`` marker and run in a pytest session of
their own (scripts/test.sh runs ``pytest -m multinode`` after the main session, which has its own
single-node stack: one Ray cluster per process)."""

from __future__ import annotations

import pytest

from tessera.cluster.sim_cluster import SimCluster, sim_document

MODEL = {"time_scale": 1.0}
"""Real time: a guided step of one 256x256 window of 15 latent frames (the 1.3B) sleeps 94 ms."""
FIXED = dict(denoiser={"num_replicas": 2}, decoder={"num_replicas": 1})
JOBS = {"step_progress_s": 0, "progress_flush_s": 0.1, "watch_poll_s": 0.1, "checkpoint_every_groups": 5}


def document(**overrides) -> dict:
    return sim_document(model=MODEL, jobs=JOBS, **{**FIXED, **overrides})


@pytest.fixture(scope="session")
def sim_cluster(tmp_path_factory):
    # Three GPU nodes of one GPU: two Denoiser replicas and one Decoder fill them exactly.
    with SimCluster(tmp_path_factory.mktemp("sim-cluster"), document(), gpu_nodes=[1, 1, 1], head_cpus=4) as cluster:
        cluster.wait_all_running(timeout_s=300)
        yield cluster
