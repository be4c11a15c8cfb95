"""The container build file and the Ray cluster launcher config install Tessera the way the README
says, and hold what the deployments need. Neither can run here (no Docker, no cloud): these check
them as far as this machine allows, the launcher config with Ray's own validator."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from tessera.serving.config import TesseraConfig
from tests.deploy.capacity import cpu_stage_cpus, gpu_nodes_needed

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
SECTION = "## From the embedded default to a GPU cluster"


def readme_install_command() -> str:
    """The command the README's deploy section gives for installing Tessera on a node."""
    readme = (REPO / "README.md").read_text()
    assert SECTION in readme
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    [command] = re.findall(r"\*\*Install\*\*[^`]*`([^`]+)`", section)
    return command


def test_the_readme_install_command_is_what_run_sh_runs():
    """The README says the nodes are installed as `scripts/run.sh` installs this machine."""
    command = readme_install_command()
    assert command in (REPO / "scripts" / "run.sh").read_text().splitlines()


# --- deploy/Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\s*\\\n\s*", " ", "\n".join(lines))
    return [(word.upper(), rest.strip()) for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines()) if word]


def dockerignore_patterns() -> list[str]:
    text = (DEPLOY / "Dockerfile.dockerignore").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_every_file_the_dockerfile_copies_exists_and_is_in_the_build_context():
    copies = [shlex.split(arguments) for name, arguments in dockerfile_instructions(DEPLOY / "Dockerfile") if name == "COPY"]
    assert copies
    ignored = dockerignore_patterns()
    sources = [source for arguments in copies for source in arguments[:-1]]
    for source in sources:
        assert not source.startswith("--"), f"COPY {source}: only plain copies from the build context (the repository root)"
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        top = source.rstrip("/").split("/")[0]
        assert top not in ignored, f"COPY {source}: left out of the build context by Dockerfile.dockerignore"
    # What `pip install -e .` needs: pyproject.toml, its readme and every package folder.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values()}
    copied = {source.rstrip("/") for source in sources}
    assert needed <= copied, f"not copied: {sorted(needed - copied)}"
    assert "scripts/bootstrap.sh" in copied


def test_the_dockerfile_installs_as_the_readme_says_on_the_python_tessera_needs():
    instructions = dockerfile_instructions(DEPLOY / "Dockerfile")
    [base] = [arguments for name, arguments in instructions if name == "FROM"]
    assert re.fullmatch(r"python:3\.11[-\w.]*", base), base
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.11,<3.12"
    runs = [arguments for name, arguments in instructions if name == "RUN"]
    assert any(run == readme_install_command() or run.startswith(readme_install_command() + " && ") for run in runs), runs
    [workdir] = [arguments for name, arguments in instructions if name == "WORKDIR"]
    # KubeRay starts `ray start` from PATH: the venv the install made must come first.
    [path] = [arguments for name, arguments in instructions if name == "ENV" and arguments.startswith("PATH=")]
    assert path.startswith(f"PATH={workdir}/.venv/bin:"), path
    assert any(run.startswith("apt-get") and " wget" in run for run in runs), "KubeRay's worker readiness probe runs wget"
    [user] = [arguments for name, arguments in instructions if name == "USER"]
    assert user not in ("root", "0")


# --- deploy/ray-cluster.yaml ---------------------------------------------------------------------


@pytest.fixture
def cluster() -> dict:
    return yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())


def test_the_cluster_config_passes_rays_own_validation(cluster):
    """What `ray up` runs on the file before it calls the cloud: defaults filled in, then Ray's
    JSON schema (unknown keys refused) and its cross-checks (head type, min/max workers)."""
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_the_cluster_installs_tessera_as_the_readme_says(cluster):
    assert cluster["file_mounts"]["~/tessera"] == ".", "the repository, from where `ray up` runs"
    assert cluster["setup_commands"] == [f"cd ~/tessera && {readme_install_command()}"]
    assert ".venv" in cluster["rsync_exclude"], "each node makes its own venv"


def test_ray_starts_from_the_venv_with_token_auth_and_a_private_dashboard(cluster):
    assert cluster["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token", "every node has the cluster's token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [stop, start] = cluster[key]
        assert stop == "~/tessera/.venv/bin/ray stop"
        # In ~/tessera: Serve's workers resolve the relative config path of deploy/serve.yaml there.
        assert "cd ~/tessera && RAY_AUTH_MODE=token .venv/bin/ray start " in start, start
    [_, head_start] = cluster["head_start_ray_commands"]
    assert "--head" in head_start and "--dashboard-host=127.0.0.1" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start


def test_the_cluster_holds_the_example_config_at_its_maxima(cluster):
    """deploy/tessera.example.yaml, which deploy/serve.yaml names, fits the node types."""
    serve_config = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    config = TesseraConfig.from_file(REPO / serve_config["applications"][0]["args"]["config"])
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]["resources"]
    [gpu_type] = [node for name, node in types.items() if name != cluster["head_node_type"]]
    assert head["GPU"] == 0 and gpu_type["resources"]["GPU"] >= 1
    needed = gpu_nodes_needed(config, node_cpus=gpu_type["resources"]["CPU"], node_gpus=gpu_type["resources"]["GPU"])
    assert needed <= gpu_type["max_workers"] <= cluster["max_workers"], f"{needed} GPU nodes needed at the maxima"
    assert 1 <= gpu_type["min_workers"] <= gpu_type["max_workers"]
    assert cpu_stage_cpus(config) <= head["CPU"]
