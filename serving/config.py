"""Tessera's application config: one strict, validated document for the whole Serve app.

Every deployment's resources, replica counts and autoscaling bounds, the storage endpoint,
the model and the request limits come from here, never from literals in code. The defaults
are the embedded single-machine stack (CPU, one replica each, local S3 server); production
configs (``deploy/``) override the same fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from tessera.models.config import ModelConfig, NativeModelConfig
from tessera.serving.jobs.planner import TilingOptions
from tessera.serving.storage import StorageConfig
from tessera.serving.video import VideoEncodingConfig


def load_document(path: str | Path) -> dict:
    """A config file's content as plain data (validated later, possibly after filling gaps)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoscalingConfig(_Strict):
    """Ray Serve autoscaling bounds for one deployment."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept even when idle.")
    max_replicas: int = Field(1, ge=1, description="Upper bound; every replica must fit the cluster's resources.")
    initial_replicas: int | None = Field(None, ge=0, description="Replicas at start; None: min_replicas.")
    target_ongoing_requests: float = Field(
        1.0, gt=0, description="Requests in flight per replica that the autoscaler aims for."
    )
    upscale_delay_s: float = Field(2.0, ge=0, description="Sustained load needed before adding replicas.")
    downscale_delay_s: float = Field(30.0, ge=0, description="Sustained idleness needed before removing replicas.")
    metrics_interval_s: float = Field(1.0, gt=0, description="How often replicas report load.")
    look_back_period_s: float = Field(5.0, gt=0, description="Window over which load is averaged.")
    downscale_to_zero_delay_s: float | None = Field(
        None, ge=0, description="With min_replicas 0: sustained idleness before the last replica goes; None: downscale_delay_s."
    )
    policy: Literal["requests", "backlog"] = Field(
        "requests", description="'requests': Serve's own policy (ongoing requests per replica, target_ongoing_requests). "
        "'backlog' (Denoiser only): the windows its step schedulers hold, per priority class, over windows_per_replica "
        "(serving/autoscaling.py)."
    )
    windows_per_replica: float = Field(
        8.0, gt=0, description="'backlog' policy: windows one replica should hold (about its batch size, "
        "batching.max_batch_items)."
    )
    batch_weight: float = Field(
        0.5, ge=0, le=1, description="'backlog' policy: how much a batch-class window counts against an interactive one."
    )

    def serve_options(self) -> dict:
        """Ray Serve's ``autoscaling_config``."""
        options = self.model_dump(exclude_none=True, exclude={"policy", "windows_per_replica", "batch_weight"})
        if self.policy == "backlog":
            options["policy"] = {
                "policy_function": "tessera.serving.autoscaling:BacklogPolicy",
                "policy_kwargs": {"windows_per_replica": self.windows_per_replica, "batch_weight": self.batch_weight},
            }
        return options

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie between min_replicas and max_replicas")
        return self


class DeploymentConfig(_Strict):
    """Resources and scaling of one Serve deployment."""

    num_cpus: float = Field(..., ge=0, description="CPUs reserved per replica (fractions allowed).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica (fractions allowed); 0 on CPU.")
    memory_bytes: int | None = Field(None, ge=0, description="Memory reserved per replica for scheduling; None: no reservation.")
    num_replicas: int | None = Field(
        1, ge=1, description="Fixed replica count. Set to None and give `autoscaling` to autoscale."
    )
    autoscaling: AutoscalingConfig | None = Field(None, description="Autoscaling bounds; exclusive with num_replicas.")
    max_ongoing_requests: int = Field(8, ge=1, description="Requests a replica works on at once.")
    max_queued_requests: int = Field(
        -1, ge=-1, description="Requests waiting for a replica before callers get back-pressure; -1: unbounded."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per replica; None: derived from num_cpus (at least 1)."
    )
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="How long Serve lets a stopping replica finish (scale-down, redeploy) before killing it; "
        "a JobRunner replica hands its jobs over within it."
    )
    request_router: Literal["power_of_two", "least_loaded"] = Field(
        "power_of_two", description="How callers pick a replica for each call. 'power_of_two': Serve's default (the "
        "less loaded of two random replicas, by their queue lengths). 'least_loaded': the replica with the fewest calls "
        "this caller has in flight to it, counted when chosen (serving/routing.py), so a step group's calls sent at "
        "once spread one per replica."
    )

    @model_validator(mode="after")
    def _replicas_or_autoscaling(self) -> DeploymentConfig:
        if (self.num_replicas is None) == (self.autoscaling is None):
            raise ValueError("set exactly one of num_replicas and autoscaling")
        return self

    @property
    def threads(self) -> int:
        """torch threads for a replica: explicit, or the whole CPUs it reserved."""
        return self.torch_threads or max(1, int(self.num_cpus))

    @property
    def most_replicas(self) -> int:
        """The most replicas this deployment can have: ``num_replicas``, or the autoscaling bound."""
        return self.num_replicas if self.num_replicas is not None else self.autoscaling.max_replicas

    def serve_options(self) -> dict:
        """Keyword arguments for ``Deployment.options``."""
        actor_options: dict = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            actor_options["memory"] = self.memory_bytes
        options: dict = {
            "ray_actor_options": actor_options,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }
        if self.request_router == "least_loaded":
            options["request_router_config"] = {"request_router_class": "tessera.serving.routing:LeastLoadedRouter"}
        if self.autoscaling is not None:
            options["autoscaling_config"] = self.autoscaling.serve_options()
        else:
            options["num_replicas"] = self.num_replicas
        return options


class DeploymentsConfig(_Strict):
    """One entry per Serve deployment."""

    gateway: DeploymentConfig = Field(
        DeploymentConfig(num_cpus=0.1, max_ongoing_requests=256, max_queued_requests=64),
        description="gRPC and HTTP ingress: stateless (auth, validation, job records, watch); any number of replicas.",
    )
    job_runner: DeploymentConfig = Field(
        DeploymentConfig(num_cpus=0.15, max_ongoing_requests=64, graceful_shutdown_timeout_s=60.0),
        description="Runs jobs: owns each by a lease, drives the sampling loop across Denoiser replicas, "
        "fuses windows, muxes and uploads outputs.",
    )
    prompt_expander: DeploymentConfig = Field(
        DeploymentConfig(num_cpus=0.25, max_ongoing_requests=16, max_queued_requests=256),
        description="Re-captioning and text encoding.",
    )
    denoiser: DeploymentConfig = Field(
        # Deep enough that every window of a 60 s video is queued on a replica at once: when all
        # replicas are full, Serve's router retries with backoff and the replicas sit idle.
        DeploymentConfig(num_cpus=1.0, max_ongoing_requests=32, max_queued_requests=1024),
        description="Stateless diffusion step server (the GPU stage). A full queue makes the JobRunner back off "
        "and retry the call (stage calls are stateless), so admitted jobs still complete.",
    )
    decoder: DeploymentConfig = Field(
        DeploymentConfig(num_cpus=0.5, max_ongoing_requests=4, max_queued_requests=256),
        description="Video VAE decoding and H.264 encoding of time tiles.",
    )

    @model_validator(mode="after")
    def _backlog_policy_on_the_denoiser_only(self) -> DeploymentsConfig:
        for name in ("gateway", "job_runner", "prompt_expander", "decoder"):
            scaling = getattr(self, name).autoscaling
            if scaling is not None and scaling.policy == "backlog":
                raise ValueError(f"deployments.{name}.autoscaling.policy 'backlog' is for the denoiser only (it reports "
                                 "the windows it holds); use 'requests'")
        return self


class StepBatchingConfig(_Strict):
    """How a Denoiser replica batches sampler steps across windows and jobs (``serving/step_scheduling.py``)."""

    max_batch_items: int = Field(
        8, ge=1, description="Most windows in one forward. The model's memory bound (its family's `max_batch_items`) "
        "may lower it per shape. 1: no batching across windows or jobs (each forward one window)."
    )
    max_wait_s: float = Field(
        0.005, ge=0, description="Longest an idle replica waits for more windows to arrive before its first forward; "
        "windows in flight never wait (newcomers join them at the next step)."
    )
    aging_s: float = Field(
        2.0, gt=0, description="Seconds a waiting step needs to climb one priority level within its class (interactive: "
        "priority >= jobs.interactive_min_priority; batch: below)."
    )
    starvation_s: float = Field(
        10.0, gt=0, description="Interactive steps go ahead of batch steps at every step boundary, unless the replica has "
        "run no batch forward for this long while batch steps waited: then one batch forward goes first, so batch "
        "work is slowed under interactive load, never starved."
    )
    mix_classes: bool = Field(
        False, description="Let interactive and batch steps (jobs.interactive_min_priority) share a forward: more "
        "throughput when the forward's fixed cost dominates, but interactive steps then wait for the batch steps "
        "riding along. Off: a forward holds one class."
    )


class GrpcConfig(_Strict):
    """Ray Serve's gRPC proxy."""

    port: int = Field(9000, ge=1, le=65535, description="Port of the gRPC proxy on every node (insecure; see deploy/ for TLS).")
    host: str = Field("127.0.0.1", description="Address clients use to reach the proxy (printed by the CLI).")


class HttpConfig(_Strict):
    """Ray Serve's HTTP proxy, which serves the OpenAI-compatible videos API (``/v1/videos``)."""

    port: int = Field(9001, ge=1, le=65535, description="Port of the HTTP proxy (the OpenAI-compatible API at /v1).")
    host: str = Field(
        "127.0.0.1", description="Address the HTTP proxy binds (the embedded stack: loopback only) and the CLI prints."
    )
    poll_after_ms: int = Field(
        1000, ge=0, description="Sent as 'openai-poll-after-ms' with every video that has not ended: how long the "
        "OpenAI SDK's poll helpers (create_and_poll, poll) wait before asking again. 0: no header (the SDK's 1 s)."
    )
    model_aliases: tuple[str, ...] = Field(
        (), description="Other model names accepted as the deployed model in requests, e.g. ['sora-2'] so clients "
        "that hard-code a model name work unchanged. Any other name is refused (400, param 'model')."
    )
    sse_keepalive_s: float = Field(
        15.0, gt=0, description="Longest silence on a /v1/videos/{id}/events stream before a keep-alive comment is sent."
    )


class LimitsConfig(_Strict):
    """Request limits enforced by the gateway before any model work (within the model's own limits)."""

    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt or negative prompt accepted.")
    min_duration_s: float = Field(0.0, ge=0, description="Shortest video accepted (0: a single frame is fine).")
    max_duration_s: float = Field(60.0, gt=0, description="Longest video accepted.")
    default_duration_s: float = Field(2.0, gt=0, description="Duration when a request gives neither duration nor frames.")
    default_width: int | None = Field(None, ge=1, description="Width when a request gives none; None: the model's default.")
    default_height: int | None = Field(None, ge=1, description="Height when a request gives none; None: the model's default.")
    max_idempotency_key_chars: int = Field(128, ge=1, description="Longest idempotency key accepted.")
    max_inline_input_bytes: int = Field(
        8 * 1024 * 1024, ge=0,
        description="Largest image or video sent inline in a request (Media.data); above it the request gets "
        "RESOURCE_EXHAUSTED and the input must be uploaded to the bucket and given as an s3:// URI.",
    )
    max_input_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest input object read from the bucket (Media.uri); above it: RESOURCE_EXHAUSTED."
    )
    max_input_side: int = Field(
        4096, ge=1, description="Largest width or height of an input image or video that is decoded, in pixels."
    )
    shared_input_prefixes: tuple[str, ...] = Field(
        (), description="Key prefixes of the bucket every tenant may read inputs from, besides its own '{tenant}/'."
    )
    max_shots: int = Field(16, ge=1, description="Most shots in a multi-shot request.")


class JobsConfig(_Strict):
    """How jobs are admitted, owned and run (serving/jobs/engine.py, serving/jobs/lease.py)."""

    def job_class(self, priority: int) -> str:
        """'interactive' or 'batch': the admission class of a job of this priority."""
        return "interactive" if priority >= self.interactive_min_priority else "batch"

    def class_limits(self, job_class: str) -> tuple[int, int]:
        """(running slots, queue places) per JobRunner replica for a class."""
        if job_class == "interactive":
            return self.max_running_jobs, self.max_queued_jobs
        return self.max_running_batch_jobs, self.max_queued_batch_jobs

    max_queued_jobs: int = Field(
        64, ge=0, description="Interactive jobs each JobRunner replica holds waiting for a slot; a submit that no replica "
        "has room for gets RESOURCE_EXHAUSTED with a retry hint."
    )
    max_running_jobs: int = Field(2, ge=1, description="Interactive jobs one JobRunner replica renders at once; others wait queued.")
    interactive_min_priority: int = Field(
        0, description="Jobs with at least this priority are interactive; below it they are batch work (batch "
        "rendering's items run at -1 by default). Each class has its own queue and running slots on every replica, "
        "so a full batch backlog never turns an interactive request away nor holds its slot."
    )
    max_queued_batch_jobs: int = Field(
        64, ge=0, description="Batch-class jobs each JobRunner replica holds waiting for a slot (besides max_queued_jobs "
        "interactive ones)."
    )
    max_running_batch_jobs: int = Field(
        2, ge=1, description="Batch-class jobs one JobRunner replica renders at once, in slots of their own (their "
        "steps still yield to interactive steps in the Denoiser)."
    )
    progress_flush_s: float = Field(
        0.5, gt=0, description="Shortest interval between progress writes to a running job's S3 record (what "
        "watchers on any gateway see)."
    )
    step_progress_s: float = Field(
        0.2, ge=0,
        description="Shortest interval between the step updates a Denoiser streams back while it denoises a "
        "single-window video: faster steps are reported together, since each update is a hop of its own "
        "(a GPU step of a real model takes longer, so every step is seen). 0: every step.",
    )
    watch_poll_s: float = Field(0.25, gt=0, description="How often a gateway re-reads the record of a job it streams.")
    lease_ttl_s: float = Field(
        15.0, gt=0, description="A job whose record has not changed for this long (on the observer's clock) is "
        "taken over by another JobRunner replica."
    )
    heartbeat_s: float = Field(3.0, gt=0, description="How often a lease holder renews each job it holds; below lease_ttl_s / 2.")
    scan_interval_s: float = Field(
        2.0, gt=0, description="How often each JobRunner replica looks for unowned jobs and expired leases."
    )
    claim_grace_s: float = Field(
        2.0, ge=0, description="A new job is left this long to the replica its gateway offered it to before a scan may claim it."
    )
    checkpoint_every_groups: int = Field(
        5, ge=0, description="Save a running job's latents every this many step groups (and when denoising ends), so a "
        "takeover resumes from there; deleted when the job ends. 0: no checkpoints (a takeover starts over)."
    )
    storage_retry_s: float = Field(
        30.0, gt=0, description="How long a job rides out an unreachable object store while writing its outputs before "
        "it fails with UNAVAILABLE."
    )
    end_retry_s: float = Field(
        600.0, gt=0, description="How long a replica keeps trying to record a job's end (and clean up) while storage is away."
    )
    stage_retry_s: float = Field(
        120.0, ge=0, description="How long a stage call whose replica died is retried (on another replica, or the "
        "replacement Serve starts) before the job fails."
    )
    cancel_wait_s: float = Field(
        10.0, ge=0, description="How long CancelJob waits for a running job to stop before answering with its current state."
    )
    max_concurrent_probes: int = Field(
        4, ge=1, description="Submits whose media inputs one gateway replica reads and probes at once."
    )
    retry_pushback_ms: int = Field(
        2000, ge=0, description="Retry hint sent in 'grpc-retry-pushback-ms' with RESOURCE_EXHAUSTED when no replica has room."
    )

    @model_validator(mode="after")
    def _heartbeat_within_ttl(self) -> JobsConfig:
        if self.heartbeat_s * 2 > self.lease_ttl_s:
            raise ValueError(f"jobs.heartbeat_s ({self.heartbeat_s}) must be at most half of jobs.lease_ttl_s ({self.lease_ttl_s})")
        return self


class TilingConfig(_Strict):
    """Time tiling of long videos (DESIGN.md §2)."""

    window_frames: int | None = Field(None, ge=1, description="Latent frames per denoising window; None: the model's native window.")
    min_overlap_frames: int = Field(2, ge=0, description="Fewest latent frames neighbouring windows share (fused with ramp weights).")
    sync_every_steps: int = Field(1, ge=1, description="Sampler steps between fusions of overlapping windows (1: tightest coupling).")
    fit_windows: bool = Field(
        True,
        description="Shorten a long video's windows (never above the window length) to the fewest latent frames that "
        "still cover it with the minimum overlap, so less is recomputed in overlaps: at 8 fps a 5 s video takes 14 "
        "instead of 16 latent frames of work, a 10 s one 28 instead of 32. Multi-shot segments and loops keep full-length "
        "windows. False: every window has the full length.",
    )
    decode_tile_frames: int | None = Field(None, ge=1, description="Latent frames per decode tile; None: the model's native window.")
    decode_ahead: int = Field(4, ge=1, description="Decode tiles in flight at once per job (bounds memory; spreads over Decoder replicas).")
    max_windows_per_call: int = Field(
        4, ge=1,
        description="Most windows of one step group sent to the Denoiser in one call and run as one batch. A long "
        "video's windows are spread over as many calls as the Denoiser can have replicas, and more when a call "
        "would exceed this (it bounds a replica's activation memory). 1: one call per window.",
    )

    def options(self, geometry) -> TilingOptions:
        window = self.window_frames or geometry.native_window
        if self.min_overlap_frames >= window:
            raise ValueError(f"tiling.min_overlap_frames ({self.min_overlap_frames}) must be below the window ({window} latent frames)")
        return TilingOptions(
            window=window,
            min_overlap=self.min_overlap_frames,
            sync_every=self.sync_every_steps,
            fit_windows=self.fit_windows,
            decode_tile=self.decode_tile_frames or geometry.native_window,
            decode_context=geometry.decode_context,
        )


TENANT_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
KEY_HASH_PATTERN = r"sha256:[0-9a-f]{64}"


def _check_tenant(tenant: str) -> None:
    import re

    if not re.fullmatch(TENANT_PATTERN, tenant):
        raise ValueError(f"tenant name {tenant!r} must match {TENANT_PATTERN} (it becomes an S3 key prefix)")


class AuthConfig(_Strict):
    """API keys and tenants. On by default: every call must carry a key of some tenant.

    The config holds SHA-256 hashes of the keys, never the keys (see serving/auth.py for why
    SHA-256 and not a slow password hash: keys are 256-bit random tokens)."""

    enabled: bool = Field(
        True, description="Require an API key on every call (gRPC metadata 'authorization: Bearer KEY' or "
        "'x-api-key: KEY'; HTTP the same headers); a missing or unknown key gets UNAUTHENTICATED. With no keys "
        "configured every call is refused. false: no keys, every caller is `default_tenant` (a trusted network only).",
    )
    api_keys: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Tenant name to the hashes of its API keys, each 'sha256:<64 hex digits>' (`tessera auth "
        "new-key` makes a key and its hash; `tessera auth hash` hashes one). Several per tenant allow rotation. "
        "The embedded stack (`tessera up`) adds a key of its own for `default_tenant` when none is configured.",
    )
    default_tenant: str = Field(
        "default", pattern=f"^{TENANT_PATTERN}$",
        description="Tenant of every caller when auth is disabled, and the tenant of the embedded stack's own key.",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_hash_is_a_list(cls, data):
        if isinstance(data, dict) and isinstance(data.get("api_keys"), dict):
            data = {**data, "api_keys": {t: (h,) if isinstance(h, str) else h for t, h in data["api_keys"].items()}}
        return data

    @model_validator(mode="after")
    def _tenants_and_hashes(self) -> AuthConfig:
        import re

        seen: dict[str, str] = {}
        for tenant, hashes in self.api_keys.items():
            _check_tenant(tenant)
            if not hashes:
                raise ValueError(f"auth.api_keys.{tenant} has no key hash")
            for value in hashes:
                if not re.fullmatch(KEY_HASH_PATTERN, value):
                    raise ValueError(
                        f"auth.api_keys.{tenant}: expected a key hash 'sha256:<64 hex digits>', got a value of "
                        f"{len(value)} characters; the config holds hashes, not keys (`tessera auth hash` prints one)"
                    )
                if seen.setdefault(value, tenant) != tenant:
                    raise ValueError(f"one key hash is given to two tenants ({seen[value]} and {tenant})")
        if not self.enabled and self.api_keys:
            raise ValueError("auth.enabled is false but auth.api_keys are set: remove the keys or enable auth")
        return self


class TenantQuota(_Strict):
    """Limits on one tenant's use, checked at submit (None: no limit)."""

    max_concurrent_jobs: int | None = Field(
        None, ge=0, description="Jobs of the tenant that have not ended (queued or running) at once."
    )
    max_queued_jobs: int | None = Field(
        None, ge=0, description="Jobs of the tenant waiting to start (state QUEUED) at once."
    )
    max_video_seconds_per_hour: float | None = Field(
        None, ge=0, description="Seconds of video the tenant may submit in any sliding hour (the new job included; "
        "jobs that later fail or are cancelled still count, an image counts as one frame)."
    )

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.max_concurrent_jobs, self.max_queued_jobs, self.max_video_seconds_per_hour))


class QuotasConfig(_Strict):
    """Per-tenant quotas, enforced by every gateway replica from the job records in S3 (serving/jobs/quotas.py).
    Over quota, a submit gets RESOURCE_EXHAUSTED naming the quota."""

    default: TenantQuota = Field(TenantQuota(), description="Quota of every tenant without an entry in `tenants`.")
    tenants: dict[str, TenantQuota] = Field(
        default_factory=dict, description="Tenant name to its own quota (replaces `default` for that tenant, whole)."
    )

    @model_validator(mode="after")
    def _tenant_names(self) -> QuotasConfig:
        for tenant in self.tenants:
            _check_tenant(tenant)
        return self

    def of(self, tenant: str) -> TenantQuota:
        return self.tenants.get(tenant, self.default)


class NetworkConfig(_Strict):
    """Where the embedded stack (`tessera up`, cluster/stack.py) listens. Not used by `serve run` /
    `serve deploy` onto a cluster, where Ray binds its ports and Serve's gRPC proxy on every interface."""

    loopback_only: bool = Field(
        True, description="Every port the embedded stack opens (gRPC, HTTP, S3, Ray's own) listens on 127.0.0.1 "
        "only; after start the stack checks every listening socket of its processes and refuses to run if one is on "
        "another interface. false: Ray's defaults (its ports and Serve's gRPC proxy on every interface), for a stack "
        "other machines must reach; then firewall it or put a TLS proxy in front.",
    )


class MetricsConfig(_Strict):
    """Prometheus metrics (serving/metrics.py). They are exported by Ray's metrics agent on each node's
    metrics export port, beside Ray's and Serve's own; on a Ray cluster that port and Ray's reporting
    interval are the cluster's (`ray start --metrics-export-port`), the first two fields here set them
    for the embedded stack only."""

    export_port: int = Field(
        9020, ge=1, le=65535, description="Embedded stack: the port Ray's metrics agent serves /metrics on "
        "(127.0.0.1 while network.loopback_only); `tessera status` prints the URL.",
    )
    report_interval_s: float = Field(
        5.0, gt=0, le=60, description="Embedded stack: how often every Ray process sends what it recorded to the "
        "metrics agent (Ray's metrics_report_interval_ms); a scrape lags a recording by up to this much.",
    )
    replicas_poll_s: float = Field(
        10.0, gt=0, description="How often each Gateway replica reads the replica counts of every deployment from "
        "Serve's controller for tessera_deployment_replicas.",
    )


class LogsConfig(_Strict):
    """Logs of every deployment (Serve's replica logs under the Ray session's logs/serve/, serving/logs.py)."""

    encoding: Literal["JSON", "TEXT"] = Field(
        "JSON", description="JSON: one JSON object per line, with the job (tessera_job_id), request (request_id) and "
        "tenant besides Ray's and Serve's context. TEXT: Serve's text lines.",
    )
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Lowest level written.")
    access_log: bool = Field(True, description="Serve's one line per call handled by a replica (method, status, time).")


class HFExpansionConfig(_Strict):
    """A Hugging Face causal language model that re-captions prompts (loaded from a local folder)."""

    path: Path = Field(
        ...,
        description="Folder holding the model and its tokenizer in `save_pretrained` layout (config.json, "
        "safetensors, tokenizer files). Loaded with local_files_only: nothing is downloaded. Must exist on "
        "every PromptExpander replica; a missing folder stops the replica at start.",
    )
    device: str = Field(
        "cpu", pattern=r"^(cpu|cuda(:\d+)?|mps)$",
        description="torch device of the language model ('cpu', 'cuda', 'cuda:1'); give the prompt_expander "
        "deployment num_gpus when this is a GPU.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weight dtype; bfloat16/float16 halve memory on GPU."
    )
    max_new_tokens: int = Field(
        160, ge=1, le=4096, description="Most tokens generated per caption (greedy decoding, deterministic)."
    )
    min_words: int = Field(
        3, ge=1, description="A cleaned output with fewer words counts as a failure: the built-in expander is used."
    )


class OpenAIExpansionConfig(_Strict):
    """An OpenAI-compatible chat completions endpoint (vLLM, ray.serve.llm, a hosted API) that re-captions prompts."""

    base_url: str = Field(
        ..., pattern=r"^https?://\S+$",
        description="API root up to and including the version, e.g. 'http://llm.internal:8000/v1'; "
        "requests go to {base_url}/chat/completions.",
    )
    model: str = Field(..., min_length=1, description="Model name sent in every request.")
    api_key: SecretStr | None = Field(
        None, description="Sent as 'Authorization: Bearer <key>'; None sends no Authorization header."
    )
    timeout_s: float = Field(
        30.0, gt=0, description="Socket timeout of one attempt (connect, and each wait for response bytes)."
    )
    max_retries: int = Field(
        2, ge=0, description="Further attempts after a timeout, connection error, HTTP 5xx or 429; other 4xx are not retried."
    )
    backoff_s: float = Field(
        0.5, ge=0, description="Pause before the first retry; doubles before each further retry."
    )
    max_tokens: int = Field(300, ge=1, description="Most tokens the endpoint may generate per caption.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature; 0 asks for deterministic output.")
    min_words: int = Field(
        3, ge=1, description="A cleaned answer with fewer words counts as a failure: the built-in expander is used."
    )


class ExpansionConfig(_Strict):
    """Prompt expansion (re-captioning) backend. Any failure of a language-model backend falls back to
    the built-in expander, and the job manifest records why."""

    backend: Literal["builtin", "hf_causal_lm", "openai"] = Field(
        "builtin",
        description="'builtin': the model family's deterministic re-captioner (offline default); "
        "'hf_causal_lm': a local Hugging Face causal LM (section `hf`); "
        "'openai': an OpenAI-compatible chat endpoint (section `openai`).",
    )
    hf: HFExpansionConfig | None = Field(None, description="Settings of the 'hf_causal_lm' backend; required by it, rejected otherwise.")
    openai: OpenAIExpansionConfig | None = Field(None, description="Settings of the 'openai' backend; required by it, rejected otherwise.")
    instruction: str | None = Field(
        None, min_length=1,
        description="Instruction given to a language-model backend before the prompt; None: the default in "
        "serving/expansion.py (one detailed caption, keep every detail, caption only).",
    )

    @model_validator(mode="after")
    def _backend_section(self) -> ExpansionConfig:
        sections = {"hf_causal_lm": ("hf", self.hf), "openai": ("openai", self.openai)}
        for backend, (name, section) in sections.items():
            if self.backend == backend and section is None:
                raise ValueError(f"expansion.backend is {backend!r} but the expansion.{name} section is missing")
            if self.backend != backend and section is not None:
                raise ValueError(
                    f"expansion.{name} is set but expansion.backend is {self.backend!r}; "
                    f"set backend: {backend} or remove the section"
                )
        if self.backend == "builtin" and self.instruction is not None:
            raise ValueError("expansion.instruction only applies to the 'hf_causal_lm' and 'openai' backends")
        return self


class TesseraConfig(_Strict):
    """The whole application."""

    app_name: str = Field("tessera", description="Ray Serve application name.")
    grpc: GrpcConfig = Field(GrpcConfig(), description="gRPC proxy settings.")
    http: HttpConfig = Field(HttpConfig(), description="HTTP proxy settings (the OpenAI-compatible videos API).")
    storage: StorageConfig = Field(..., description="S3-compatible object store for outputs and job records.")
    model: ModelConfig = Field(NativeModelConfig(), description="Model family and weights, shared by every stage.")
    deployments: DeploymentsConfig = Field(DeploymentsConfig(), description="Resources and scaling per deployment.")
    limits: LimitsConfig = Field(LimitsConfig(), description="Request limits.")
    jobs: JobsConfig = Field(JobsConfig(), description="Job admission, leases, checkpoints and retries.")
    tiling: TilingConfig = Field(TilingConfig(), description="Time tiling of denoising and decoding.")
    batching: StepBatchingConfig = Field(StepBatchingConfig(), description="Step batching in the Denoiser.")
    video: VideoEncodingConfig = Field(VideoEncodingConfig(), description="H.264 encoding.")
    auth: AuthConfig = Field(AuthConfig(), description="API keys and tenants.")
    quotas: QuotasConfig = Field(QuotasConfig(), description="Per-tenant quotas.")
    network: NetworkConfig = Field(NetworkConfig(), description="Where the embedded stack listens.")
    metrics: MetricsConfig = Field(MetricsConfig(), description="Prometheus metrics.")
    logs: LogsConfig = Field(LogsConfig(), description="Structured logs of every deployment.")
    expansion: ExpansionConfig = Field(ExpansionConfig(), description="Prompt expansion backend.")

    @classmethod
    def from_file(cls, path: str | Path) -> TesseraConfig:
        """Load a YAML (or JSON) config file."""
        return cls.model_validate(load_document(path))

    def to_yaml(self) -> str:
        """The config as YAML with secrets revealed (to write a Serve config file)."""

        def reveal(value):
            if isinstance(value, SecretStr):
                return value.get_secret_value()
            if isinstance(value, dict):
                return {k: reveal(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [reveal(v) for v in value]
            if isinstance(value, Path):
                return str(value)
            return value

        return yaml.safe_dump(reveal(self.model_dump(mode="python")), sort_keys=False)
