"""Whether a cluster's nodes hold every Serve deployment of a Tessera config at its max replicas.

Replicas that fit no node stay pending for ever without a warning (measured with Ray 2.60), so
the deploy files are checked for it: GPU stages are packed first fit, largest first, into GPU
nodes; CPU-only stages go to the CPU head (Ray keeps CPU-only work off GPU nodes by default).
"""

from __future__ import annotations

from tessera.serving.config import DeploymentConfig, TesseraConfig


def stages(config: TesseraConfig) -> list[DeploymentConfig]:
    return [getattr(config.deployments, name) for name in type(config.deployments).model_fields]


def gpu_nodes_needed(config: TesseraConfig, node_cpus: float, node_gpus: float) -> int:
    """GPU nodes of (``node_cpus``, ``node_gpus``) that hold every GPU stage at its maximum;
    AssertionError if one replica fits no such node."""
    replicas = sorted(((stage.num_cpus, stage.num_gpus) for stage in stages(config) if stage.num_gpus > 0
                       for _ in range(stage.most_replicas)), key=lambda need: (-need[1], -need[0]))
    rooms: list[list[float]] = []  # room left (CPUs, GPUs) per node
    for cpus, gpus in replicas:
        assert cpus <= node_cpus and gpus <= node_gpus, f"a replica needing {cpus} CPUs, {gpus} GPUs fits no node"
        room = next((room for room in rooms if room[0] >= cpus and room[1] >= gpus), None)
        if room is None:
            rooms.append(room := [node_cpus, node_gpus])
        room[0] -= cpus
        room[1] -= gpus
    return len(rooms)


def cpu_stage_cpus(config: TesseraConfig) -> float:
    """CPUs the CPU-only stages reserve at their maxima."""
    return sum(stage.num_cpus * stage.most_replicas for stage in stages(config) if stage.num_gpus == 0)
