"""The Tessera app on a simulated multi-node cluster (``ray.cluster_utils.Cluster``, the ``sim``
model reserving the GPU nodes' GPUs): a GPU node lost mid-job, new nodes joining, and the
Denoiser scaled on its backlog. Everything but the accelerator is real (Ray, Serve, gRPC, the
S3 server, H.264); no assertion is about speed, every wait is bounded."""

from __future__ import annotations

import concurrent.futures

import pytest

from tessera.cluster.sim_cluster import ReplicaSampler, wait_for
from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.jobs.records import PREFIX, JobStore
from tessera.serving.storage import ObjectStore
from tests.helpers import ffprobe
from tests.multinode.conftest import document

pytestmark = [pytest.mark.multinode, pytest.mark.slow]

TENANT = "default"
SIZE = dict(width=256, height=256, fps=16)


def store(cluster) -> ObjectStore:
    return ObjectStore(cluster.config.storage)


def assert_exactly_one_video(cluster, job: pb.Job, tmp_path) -> None:
    """Succeeded; one video, one manifest and one poster under the job's prefix; one record; nothing staged."""
    assert job.state == pb.SUCCEEDED, job.error
    objects = store(cluster)
    keys = list(objects.iter_keys(f"{TENANT}/{job.job_id}/"))
    top = sorted(key.rsplit("/", 1)[1] for key in keys if "/segments/" not in key)
    assert top == ["manifest.json", "poster.png", "video.mp4"], keys
    records = [key for key in objects.iter_keys(f"{PREFIX}/jobs/{TENANT}/") if job.job_id in key]
    assert records == [JobStore.record_key(TENANT, job.job_id)]
    assert [j.job_id for j in cluster.client.iter_jobs() if j.job_id == job.job_id] == [job.job_id]
    info = ffprobe(cluster.client.download(job, tmp_path / f"{job.job_id}.mp4"))
    assert info["codec"] == "h264" and info["frames"] == job.num_frames and (info["width"], info["height"]) == (256, 256)
    wait_for(lambda: not list(objects.iter_keys(JobStore.staging_prefix(TENANT, job.job_id)))
             and not list(objects.iter_keys(JobStore.checkpoint_prefix(TENANT, job.job_id))), 60, "the clean-up after the end")


def test_replicas_are_placed_by_resources(sim_cluster):
    """The CPU stages on the head, every sim replica on a GPU node (one GPU each); all on loopback."""
    head = sim_cluster.cluster.head_node.node_id
    gpu_nodes = {node.node_id for node in sim_cluster.gpu_nodes}
    placed = {r.deployment: set() for r in sim_cluster.replicas()}
    for replica in sim_cluster.replicas():
        if replica.state == "ALIVE":
            placed[replica.deployment].add(replica.node_id)
    for name in ("Gateway", "JobRunner", "PromptExpander"):
        assert placed[name] == {head}, (name, placed[name])
    assert len(placed["Denoiser"]) == 2 and placed["Denoiser"] <= gpu_nodes
    assert len(placed["Decoder"]) == 1 and placed["Decoder"] <= gpu_nodes - placed["Denoiser"]
    listeners = sim_cluster.check_loopback()
    assert any(item.role.startswith("gRPC API") for item in listeners)


def test_gpu_node_removed_mid_job_the_job_succeeds_with_one_video(sim_cluster, tmp_path):
    # 10 s at 256x256: 3 windows of 15 latent frames; 40 steps of one group each (~0.2 s a group on 2 replicas).
    job = sim_cluster.client.submit("a red circle moving right", duration_s=10, steps=40, seed=5, **SIZE)
    wait_for(lambda: sim_cluster.client.get(job.job_id).progress.step >= 4, 120, "denoising to be under way")
    stats = sim_cluster.denoiser_stats()
    busy = {replica for replica, s in stats.items() if s["steps_run"] > 0}
    victims = [r for r in sim_cluster.replicas("Denoiser") if r.state == "ALIVE" and r.replica_id in busy]
    assert victims, f"no Denoiser replica worked on the job: {stats.keys()}"
    [node] = [n for n in sim_cluster.gpu_nodes if n.node_id == victims[0].node_id]
    sim_cluster.remove_gpu_node(node)  # SIGKILL of its raylet and every process on it, mid-job

    done = sim_cluster.client.wait(job.job_id, timeout_s=300)
    assert_exactly_one_video(sim_cluster, done, tmp_path)
    assert done.progress.step == 40
    # The lost replica's replacement waits for a GPU; a node joining gives it one.
    assert victims[0].replica_id not in {r.replica_id for r in sim_cluster.replicas("Denoiser") if r.state == "ALIVE"}
    sim_cluster.add_gpu_node(1)
    sim_cluster.wait_running("Denoiser", 2, timeout_s=180)


def test_backlog_autoscaling_scales_the_denoiser_up_under_a_burst_and_back_down(sim_cluster, tmp_path):
    while sum(node.gpus for node in sim_cluster.gpu_nodes) < 4:  # up to 3 Denoiser replicas and the Decoder
        sim_cluster.add_gpu_node(1)
    autoscaling = {"min_replicas": 1, "max_replicas": 3, "policy": "backlog", "windows_per_replica": 4,
                   "upscale_delay_s": 0.5, "downscale_delay_s": 3, "metrics_interval_s": 0.5, "look_back_period_s": 1}
    sim_cluster.redeploy(document(denoiser={"num_replicas": None, "autoscaling": autoscaling}))
    sim_cluster.wait_running("Denoiser", 1, timeout_s=180)
    with ReplicaSampler(sim_cluster, "Denoiser", interval_s=0.25) as sampler:
        # A burst: 6 jobs of 3 windows each, every step group new calls that any replica may take.
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            jobs = list(pool.map(lambda i: sim_cluster.client.submit(
                f"burst {i}", duration_s=10, steps=24, seed=100 + i, **SIZE), range(6)))
            wait_for(lambda: sim_cluster.running_replicas("Denoiser") >= 2, 240, "a second Denoiser replica")
            done = list(pool.map(lambda j: sim_cluster.client.wait(j.job_id, timeout_s=600), jobs))
        assert [j.state for j in done] == [pb.SUCCEEDED] * 6, [j.error for j in done]
        wait_for(lambda: sim_cluster.running_replicas("Denoiser") == 1, 240, "the Denoiser back to one replica")
    assert max(running for _, running, _ in sampler.samples) >= 2
    assert_exactly_one_video(sim_cluster, done[0], tmp_path)
