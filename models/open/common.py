"""Shared plumbing of the open families: a diffusers folder split into Tessera's stages.

Each family (``wan.py``, ...) is one file that says how *its* pipeline maps onto the stage
interface; what they all need lives here:

* :class:`DiffusersFolder` reads a local diffusers folder (the ``model_index.json`` layout that
  ``save_pretrained`` writes and that users download) without importing or loading weights, so
  the control plane builds the model card from the JSON configs alone;
* :func:`weights_version` hashes the weight files once per folder and caches the digest, keyed
  by the files' names, sizes and modification times;
* :func:`load_component` loads one component from the folder (``from_pretrained`` with
  ``local_files_only=True``: nothing is downloaded) onto its stage's device and dtype;
* :class:`SolverSchedule` makes the family's diffusers scheduler stateless from the Denoiser's
  point of view: a work item's solver history travels as plain data (``DenoiseWork.solver_state``)
  and is put back into a fresh copy of the scheduler on whichever replica takes the next step;
* frame conversions between Tessera's ``uint8 (T, H, W, 3)`` and the pipelines' processors.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tessera.models.interface import (
    ConditioningRequest,
    DenoiseWork,
    LatentGeometry,
    ModelCard,
    ModelLimits,
    PartNotLoadedError,
    StepResult,
    TextConditioning,
    VideoModel,
    check_denoise_work,
    keep_given,
)

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
VERSION_FILE = ".tessera-version.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- the folder ------------------------------------------------------------------------------
class DiffusersFolder:
    """A local diffusers pipeline folder: ``model_index.json`` and one folder per component."""

    def __init__(self, path: Path | str):
        self.path = Path(path).expanduser().resolve()
        index = self.path / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a diffusers folder: it has no model_index.json (give the folder that "
                "save_pretrained wrote or that was downloaded, e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers)"
            )
        self.index: dict[str, Any] = json.loads(index.read_text())

    @property
    def pipeline_class(self) -> str:
        return self.index.get("_class_name", "")

    def component(self, name: str) -> tuple[str, str] | None:
        """``(library, class name)`` of a component, or None when the pipeline has none."""
        entry = self.index.get(name)
        if not isinstance(entry, list) or len(entry) != 2 or entry[0] is None or entry[1] is None:
            return None
        return entry[0], entry[1]

    def has(self, name: str) -> bool:
        return self.component(name) is not None

    @functools.cache
    def config(self, name: str) -> dict[str, Any]:
        """A component's JSON config (``config.json``, or ``scheduler_config.json``)."""
        for file in ("config.json", "scheduler_config.json"):
            path = self.path / name / file
            if path.is_file():
                return json.loads(path.read_text())
        raise FileNotFoundError(f"{self.path / name} has no config.json or scheduler_config.json")

    def weight_files(self) -> list[Path]:
        """Every weight file of the components the pipeline lists, sorted."""
        files: list[Path] = []
        for name in sorted(self.index):
            if self.has(name) and (self.path / name).is_dir():
                files.extend(p for p in (self.path / name).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        return sorted(files)


# -- the weights' version ----------------------------------------------------------------------
def _cache_dir() -> Path:
    return Path(os.environ.get("TESSERA_CACHE_DIR") or Path.home() / ".cache" / "tessera") / "weights-version"


def _stat_key(folder: DiffusersFolder, files: list[Path]) -> list[list]:
    return [[str(p.relative_to(folder.path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def weights_version(folder: DiffusersFolder) -> str:
    """Short sha256 over every weight file's path, size and bytes, computed once per folder.

    The digest is cached in ``<folder>/.tessera-version.json`` (or, when the folder is read-only,
    under ``$TESSERA_CACHE_DIR``, default ``~/.cache/tessera``), keyed by the files' names, sizes
    and modification times: a later call (any process, any stage) reads it instead of hashing,
    and a changed file is hashed afresh. Pin ``version`` in the model config to skip hashing."""
    files = folder.weight_files()
    if not files:
        raise FileNotFoundError(f"{folder.path} has no weight files ({', '.join(WEIGHT_SUFFIXES)}) in its component folders")
    key = _stat_key(folder, files)
    places = [folder.path / VERSION_FILE, _cache_dir() / (hashlib.sha256(str(folder.path).encode()).hexdigest()[:24] + ".json")]
    for place in places:
        try:
            cached = json.loads(place.read_text())
        except (OSError, ValueError):
            continue
        if cached.get("files") == key and isinstance(cached.get("sha256"), str):
            return cached["sha256"][:12]
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(folder.path)}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    record = json.dumps({"folder": str(folder.path), "files": key, "sha256": digest.hexdigest()})
    for place in places:
        try:
            place.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=place.parent, delete=False, suffix=".tmp") as tmp:
                tmp.write(record)
            os.replace(tmp.name, place)
            break
        except OSError:
            continue
    return digest.hexdigest()[:12]


# -- devices and loading -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Placement:
    """Where one stage's modules live."""

    device: torch.device
    dtype: torch.dtype


def placement(device: str, dtype: str, strict: bool = True) -> Placement:
    """``device`` 'auto'/'cpu'/'cuda'/'cuda:N' and ``dtype`` 'auto' or a name; 'auto' dtype is
    bfloat16 on CUDA and float32 on CPU. Not ``strict`` (a part this process does not load, e.g.
    in the Gateway): a CUDA device that is not here is no error."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        if strict:
            raise ValueError(f"device {device!r} requested but no CUDA device is available")
        device = "cpu"
    chosen = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    if dtype == "auto":
        return Placement(chosen, torch.bfloat16 if chosen.type == "cuda" else torch.float32)
    return Placement(chosen, DTYPES[dtype])


def load_component(folder: DiffusersFolder, name: str, where: Placement | None):
    """One component from the folder, from local files only. Torch modules are built with empty
    weights and materialised by accelerate straight onto ``where`` (``device_map``) in its dtype;
    tokenizers load with ``AutoTokenizer``."""
    entry = folder.component(name)
    if entry is None:
        raise FileNotFoundError(f"{folder.path} has no {name} (model_index.json lists none)")
    library, class_name = entry
    source = folder.path / name
    if "tokenizer" in name:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    cls = getattr(importlib.import_module(library), class_name)
    if where is None or "processor" in name:  # processors (CLIPImageProcessor) hold no weights
        return cls.from_pretrained(source, local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True, "low_cpu_mem_usage": True}
    kwargs["dtype"] = where.dtype
    if where.device.type == "cuda":
        kwargs["device_map"] = {"": str(where.device)}
    module = cls.from_pretrained(source, **kwargs)
    if where.device.type != "cuda":
        module = module.to(where.device)
    return module.eval().requires_grad_(False)


def require(part: str, value):
    if value is None:
        raise PartNotLoadedError(f"part {part!r} was not loaded; load_model(..., parts={{{part!r}, ...}})")
    return value


# -- the stateless multistep solver ------------------------------------------------------------
SOLVER_ATTRIBUTES = (
    "_step_index", "_begin_index", "model_outputs", "timestep_list", "lower_order_nums", "last_sample",
    "this_order", "prev_derivative", "dt", "sample",
)
"""The mutable per-trajectory attributes of diffusers' schedulers (UniPC, DPM-Solver++,
flow-match Euler/Heun); everything else a scheduler holds is fixed by its config and step count."""


def _to(value, device: torch.device | str):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value


class SolverSchedule:
    """A family's diffusers scheduler, made stateless for the Denoiser.

    ``sigmas(steps)`` are the scheduler's own levels after ``set_timesteps(steps)``. A work item
    is placed on its schedule by its ``solver_state`` (``steps``, ``index``) or, without one, by
    finding the step count whose levels contain the item's ``sigmas`` (the first step of a job, or
    a job resumed from a checkpoint). The first level may lie off the schedule when the rest lies
    on it: SDEdit noises its input to exactly its strength and then joins the schedule (the level
    replaces the schedule's previous one for this trajectory, and the state remembers it).
    :meth:`start` gives a fresh copy of the scheduler positioned at the item's first level with its
    history put back; :meth:`state` reads the history out again. Nothing of a trajectory stays in
    this object."""

    def __init__(self, scheduler, max_steps: int, timesteps_for: Callable[[int, tuple | None], dict] | None = None,
                 levels_of: Callable[[Any], Any] | None = None):
        if getattr(scheduler.config, "solver_p", None):
            raise ValueError("schedulers with a solver_p are not supported")
        if getattr(scheduler.config, "stochastic_sampling", False):
            raise ValueError("stochastic_sampling draws noise inside the scheduler; it is not supported")
        self.template = scheduler
        self.max_steps = max_steps
        self.timesteps_for = timesteps_for or (lambda steps, shape: {"num_inference_steps": steps})
        self.levels_of = levels_of or (lambda scheduler: scheduler.sigmas)
        """The schedule's levels as Tessera's sigmas (1 to 0); a family whose scheduler has no
        flow sigmas (DDIM timesteps) gives its own labels."""
        self.multistep = "model_outputs" in vars(scheduler)
        """Whether the scheduler keeps a history between steps (UniPC, DPM-Solver++)."""
        self.rebuild = type(scheduler).__name__.startswith("FlowMatch")
        """Flow-match schedulers keep no history and step from one level to the next, so they are
        rebuilt from each item's own levels, whatever schedule (or SDEdit start) they came from."""

    @property
    def name(self) -> str:
        return type(self.template).__name__

    @functools.lru_cache(maxsize=64)
    def _at(self, steps: int, latent_shape: tuple | None = None):
        scheduler = copy.deepcopy(self.template)
        scheduler.set_timesteps(**self.timesteps_for(steps, latent_shape))
        return scheduler

    @functools.lru_cache(maxsize=1024)
    def sigmas(self, steps: int, latent_shape: tuple | None = None) -> tuple[float, ...]:
        """The scheduler's levels for ``steps`` steps (for a video of ``latent_shape`` where the
        schedule depends on the video's size, as with dynamic shifting)."""
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"steps must be between 1 and {self.max_steps}, got {steps}")
        return tuple(float(s) for s in self.levels_of(self._at(steps, latent_shape)))

    def top(self) -> float:
        """The first level of every schedule, pure noise in the pipelines (UniPC's is 1 - 1e-6;
        flow-match Euler's is 1.0, where flow noising gives the noise itself anyway)."""
        return 1.0 if self.rebuild else self.sigmas(1)[0]

    def _find(self, sigmas: tuple[float, ...]) -> tuple[int, int] | None:
        """The fewest steps whose levels contain ``sigmas`` as a run, and where the run starts."""
        for steps in range(max(1, len(sigmas) - 1), self.max_steps + 1):
            levels = self.sigmas(steps)
            for index in range(len(levels) - len(sigmas) + 1):
                if levels[index] < sigmas[0]:
                    break
                if levels[index : index + len(sigmas)] == sigmas:
                    return steps, index
        return None

    def locate(self, sigmas: tuple[float, ...], state: dict | None) -> tuple[int, int, float | None]:
        """``(steps, index, first)``: the schedule the item's levels belong to, where they start,
        and the off-schedule level that stands in for the schedule's at ``index`` (or None)."""
        sigmas = tuple(float(s) for s in sigmas)
        if state is not None:
            steps, index, first = int(state["steps"]), int(state["index"]), state.get("first")
            levels = list(self.sigmas(steps))
            if first is not None:
                levels[int(state["first_index"])] = first
            if tuple(levels[index : index + len(sigmas)]) != sigmas:
                raise ValueError(f"solver state at step {index} of {steps} does not match the item's noise levels {sigmas[:3]}")
            return steps, index, None
        found = self._find(sigmas)
        if found is not None:
            return found[0], found[1], None
        if len(sigmas) >= 2 and sigmas[0] > sigmas[1]:
            found = self._find(sigmas[1:])
            if found is not None and found[1] >= 1 and self.sigmas(found[0])[found[1] - 1] > sigmas[0]:
                return found[0], found[1] - 1, sigmas[0]
        raise ValueError(
            f"noise levels {sigmas} are not on any {self.name} schedule of 1 to {self.max_steps} steps; "
            "take them from the model's sigmas(steps)"
        )

    def start(self, sigmas: tuple[float, ...], state: dict | None):
        """A fresh scheduler at the item's first level, with its history from ``state``."""
        if self.rebuild:
            scheduler = copy.deepcopy(self.template)
            scheduler.sigmas = torch.tensor(sigmas, dtype=torch.float32)
            scheduler.timesteps = scheduler.sigmas[:-1] * scheduler.config.num_train_timesteps
            scheduler.num_inference_steps = len(sigmas) - 1
            scheduler._step_index, scheduler._begin_index = 0, 0
            return scheduler
        steps, index, first = self.locate(sigmas, state)
        scheduler = copy.deepcopy(self._at(steps))
        scheduler._step_index = index
        scheduler._begin_index = index
        scheduler.tessera_position = {"steps": steps, "first": None, "first_index": None}
        if state is not None and state.get("first") is not None:
            first, first_index = state["first"], int(state["first_index"])
        else:
            first_index = index
        if first is not None:
            self._replace_level(scheduler, first_index, first)
            scheduler.tessera_position.update(first=first, first_index=first_index)
        if state is not None:
            for name, value in state["scheduler"].items():
                setattr(scheduler, name, copy.copy(value))
        return scheduler

    @staticmethod
    def _replace_level(scheduler, index: int, level: float) -> None:
        sigmas = scheduler.sigmas.clone()
        sigmas[index] = level
        timesteps = scheduler.timesteps.clone()
        timesteps[index] = torch.tensor(level * scheduler.config.num_train_timesteps, dtype=torch.float64).to(timesteps.dtype)
        scheduler.sigmas, scheduler.timesteps = sigmas, timesteps

    def timestep(self, scheduler) -> torch.Tensor:
        """The timestep the denoiser is called with at the scheduler's current level."""
        return scheduler.timesteps[scheduler.step_index]

    def state(self, scheduler) -> dict[str, Any] | None:
        """The scheduler's history as plain CPU data (``DenoiseWork.solver_state``); None when
        it keeps none."""
        if not self.multistep:
            return None
        history = {name: _to(getattr(scheduler, name), "cpu") for name in SOLVER_ATTRIBUTES if name in vars(scheduler)}
        return {**scheduler.tessera_position, "index": scheduler.step_index, "scheduler": history}

    @staticmethod
    def to_device(scheduler, device: torch.device) -> None:
        """Move the history's tensors next to the latents."""
        for name in SOLVER_ATTRIBUTES:
            if name in vars(scheduler):
                setattr(scheduler, name, _to(getattr(scheduler, name), device))


def flow_add_noise(latents: torch.Tensor, noise: torch.Tensor, sigma: float, top: float) -> torch.Tensor:
    """Rectified-flow noising as the flow schedulers write it (``alpha_t * x0 + sigma_t * noise``,
    ``alpha_t = 1 - sigma_t``); at the schedule's first level the latents are the noise itself,
    as the pipelines start text to video from pure noise."""
    if sigma >= top:
        return noise.clone()
    sigma_t = torch.tensor(sigma, dtype=torch.float32)
    alpha_t = 1 - sigma_t
    return alpha_t * latents + sigma_t * noise


# -- text ------------------------------------------------------------------------------------
def prompt_rows(embeds: torch.Tensor, attention_mask: torch.Tensor) -> TextConditioning:
    """One prompt's ``(L, D)`` embeddings padded to the encoder's length, kept as its real rows
    only (float32: exact for bf16 and fp16 encoders). The families' transformers either never see
    the padding rows (masked) or see exact zeros there (Wan), so :func:`pad_text` restores them."""
    n = int(attention_mask.gt(0).sum())
    return TextConditioning(tokens=embeds[:n].float().cpu(), mask=torch.ones(n, dtype=torch.bool))


def pad_text(texts: list[TextConditioning], length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, length, D)`` embeddings (each prompt's rows, then zeros) and the ``(B, length)`` bool mask."""
    dim = texts[0].tokens.shape[1]
    tokens = torch.zeros(len(texts), length, dim, dtype=torch.float32)
    mask = torch.zeros(len(texts), length, dtype=torch.bool)
    for index, text in enumerate(texts):
        rows = text.tokens[text.mask.bool()]
        tokens[index, : rows.shape[0]] = rows.float()
        mask[index, : rows.shape[0]] = True
    return tokens.to(device, dtype), mask.to(device)


def pipeline_defaults(pipeline_class) -> dict[str, Any]:
    """The pipeline's own ``__call__`` defaults (steps, guidance, size, frames, text length)."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(pipeline_class.__call__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def card_limits(geometry: LatentGeometry, config, defaults: dict[str, Any], fps: float) -> ModelLimits:
    """Limits from the pipeline's ``__call__`` defaults (size, steps, guidance) and the config's bounds."""
    return ModelLimits(
        min_side=geometry.size_multiple, max_side=config.max_side, max_image_side=config.max_side,
        min_fps=1.0, max_fps=60.0, default_fps=fps,
        default_width=int(defaults["width"]), default_height=int(defaults["height"]),
        default_steps=int(defaults["num_inference_steps"]), max_steps=config.max_steps,
        default_guidance_scale=float(defaults["guidance_scale"]), max_prompt_tokens=config.max_sequence_length,
    )


# -- the shared model ----------------------------------------------------------------------------
class OpenVideoModel(VideoModel):
    """What every open family shares: loading the parts a stage needs into the family's own
    pipeline object (so its ``encode_prompt`` and processors are called as they are), the card
    from JSON, the schedule, and grouping work items into batched advances. A family sets the
    class attributes and writes :meth:`read_card`, ``encode_text``, :meth:`check_work`,
    :meth:`advance` and the VAE methods."""

    family: str = ""
    pipelines: tuple[str, ...] = ()
    """The pipeline classes (``model_index.json`` ``_class_name``) the family serves."""
    parts: dict[str, tuple[str, ...]] = {"text": ("tokenizer", "text_encoder"), "denoiser": ("transformer",), "vae": ("vae",)}
    """The pipeline components each part loads."""
    denoiser_component = "transformer"

    def __init__(self, config, folder: DiffusersFolder, card: ModelCard, schedule: SolverSchedule, pipe,
                 places: dict[str, Placement]):
        self.config = config
        self.folder = folder
        self.card = card
        self.schedule = schedule
        self.pipe = pipe
        self.places = places

    @classmethod
    def pipeline_class(cls):
        import diffusers

        return getattr(diffusers, cls.pipelines[0])

    @classmethod
    def open_folder(cls, config) -> DiffusersFolder:
        folder = DiffusersFolder(config.path)
        if folder.pipeline_class not in cls.pipelines:
            raise ValueError(f"{folder.path} holds a {folder.pipeline_class}; family {cls.family!r} serves {', '.join(cls.pipelines)}")
        return folder

    @classmethod
    def read_card(cls, folder: DiffusersFolder, config) -> ModelCard:
        raise NotImplementedError

    @classmethod
    def build_schedule(cls, folder: DiffusersFolder, config, geometry: LatentGeometry) -> SolverSchedule:
        import diffusers

        _, class_name = folder.component("scheduler")
        overrides = {"flow_shift": config.flow_shift} if getattr(config, "flow_shift", None) is not None else {}
        return SolverSchedule(getattr(diffusers, class_name).from_config(folder.config("scheduler"), **overrides), config.max_steps)

    @classmethod
    def load(cls, config, parts: frozenset[str]):
        if config.torch_threads is not None:
            torch.set_num_threads(config.torch_threads)
        folder = cls.open_folder(config)
        card = cls.read_card(folder, config)
        schedule = cls.build_schedule(folder, config, card.geometry)
        places = {
            "denoiser": placement(config.device, config.dtype, "denoiser" in parts),
            "text": placement(config.text_encoder_device or config.device, config.text_encoder_dtype or config.dtype, "text" in parts),
            "vae": placement(config.vae_device or config.device, config.vae_dtype or config.dtype, "vae" in parts),
        }
        components: dict[str, Any] = {name: None for names in cls.parts.values() for name in names}
        for part in parts:
            for name in cls.parts[part]:
                if folder.has(name):
                    components[name] = load_component(folder, name, None if "tokenizer" in name or "processor" in name else places[part])
        if components.get("vae") is not None and config.vae_tiling:
            components["vae"].enable_tiling()
        pipe = cls.make_pipeline(folder, components, schedule.template) if parts else None
        if pipe is not None and components.get("vae") is None:  # the processor's factor, as the pipeline sets it from its VAE
            from diffusers.video_processor import VideoProcessor

            pipe.video_processor = VideoProcessor(vae_scale_factor=card.geometry.spatial_factor)
        return cls(config, folder, card, schedule, pipe, places)

    @classmethod
    def make_pipeline(cls, folder: DiffusersFolder, components: dict[str, Any], scheduler):
        return cls.pipeline_class()(scheduler=scheduler, **components)

    def part(self, part: str, component: str):
        return require(part, getattr(self.pipe, component, None) if self.pipe is not None else None)

    # -- text ---------------------------------------------------------------------------------
    def expand(self, prompt: str, character: str = "") -> str:
        """Open families have no built-in captioner: the prompt as written (with the shared
        character description in front, for multi-shot)."""
        return f"{character.strip()} {prompt}".strip() if character.strip() else prompt

    # -- denoising ----------------------------------------------------------------------------
    def sigmas(self, steps: int) -> list[float]:
        return list(self.schedule.sigmas(steps))

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
        return flow_add_noise(latents, noise, sigma, self.schedule.top())

    def guided(self, work: DenoiseWork) -> bool:
        """Classifier-free guidance runs as the pipelines decide: a negative branch and a scale above 1."""
        return work.negative_text is not None and work.guidance_scale > 1.0

    def batch_key(self, work: DenoiseWork) -> tuple:
        return (tuple(work.latents.shape), self.guided(work))

    text_dim: int
    max_text_tokens: int

    keeps_frames: bool = False
    """Whether the family's transformer keeps given latent frames (``DenoiseWork.frames``): LTX-Video
    and Wan 2.2 TI2V condition on clean first frames whose tokens get timestep 0."""

    def check_conditioning(self, item: DenoiseWork) -> None:
        """The family's own conditioning of the item (``DenoiseWork.conditioning``); by default none."""
        payload = item.conditioning
        if payload is not None and (payload.per_frame or payload.shared):
            raise ValueError(f"model {self.card.name} takes no conditioning beyond text and given frames, "
                             f"got {sorted({*payload.per_frame, *payload.shared})}")

    def check_work(self, item: DenoiseWork) -> None:
        """The shared checks, then what the open families add: given frames only where the family's
        transformer keeps them (text to video transformers were not trained to), its own
        conditioning, the family's own scheduler, the text width."""
        check_denoise_work(item, self.card.geometry.latent_channels, self.card.geometry.patch_size)
        if item.frames is not None and not self.keeps_frames:
            raise ValueError(
                f"model {self.card.name} ({self.folder.pipeline_class}) cannot keep given frames: its transformer was "
                "not trained with frame conditioning (modes image_to_video, extend, transition)"
            )
        self.check_conditioning(item)
        if item.sampler != "euler":
            raise ValueError(f"model {self.card.name} samples with its own {self.schedule.name}; sampler {item.sampler!r} is not available")
        for text in (item.text, item.negative_text):
            if text is not None and (text.tokens.ndim != 2 or text.tokens.shape[1] != self.text_dim):
                raise ValueError(f"text tokens must be (N, {self.text_dim}), got {tuple(text.tokens.shape)}")
            if text is not None and text.tokens.shape[0] > self.max_text_tokens:
                raise ValueError(f"text of {text.tokens.shape[0]} tokens is longer than the model's {self.max_text_tokens}")

    def step(self, work: list[DenoiseWork]) -> list[torch.Tensor]:
        """The latents of :meth:`step_with_state`. A caller that drops the state restarts a
        multistep solver's history at every call (valid, but not the pipeline's trajectory)."""
        return [result.latents for result in self.step_with_state(work)]

    @torch.no_grad()
    def step_with_state(self, work: list[DenoiseWork]) -> list[StepResult]:
        self.part("denoiser", self.denoiser_component)
        for item in work:
            self.check_work(item)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(work):
            groups[(self.batch_key(item), len(item.sigmas))].append(index)
        results: list[StepResult | None] = [None] * len(work)
        for indices in groups.values():
            for index, result in zip(indices, self.advance([work[i] for i in indices]), strict=True):
                results[index] = result
        return results  # type: ignore[return-value]

    def advance(self, items: list[DenoiseWork]) -> list[StepResult]:
        """Items of one batch key and number of levels through all their levels."""
        raise NotImplementedError

    def start(self, items: list[DenoiseWork]) -> tuple[list, list[torch.Tensor]]:
        """Each item's scheduler (history put back, on the denoiser's device) and its latents
        ``(1, C, T, H, W)`` float32 there, as the pipelines keep them."""
        where = self.places["denoiser"]
        schedulers = [self.schedule.start(tuple(item.sigmas), item.solver_state) for item in items]
        for scheduler in schedulers:
            SolverSchedule.to_device(scheduler, where.device)
        return schedulers, [item.latents.to(where.device, torch.float32)[None] for item in items]

    @staticmethod
    def keep_frames(item: DenoiseWork, latents: torch.Tensor) -> torch.Tensor:
        """``(1, C, T, H, W)`` latents after a step with the item's given frames put back exactly
        (the pipelines step only the other frames; their steps are elementwise, so the rest is
        the same bits)."""
        return latents if item.frames is None else keep_given(latents, item.frames.latents, item.frames.mask)

    def finish(self, schedulers: list, latents: list[torch.Tensor]) -> list[StepResult]:
        return [StepResult(x[0].float().cpu(), self.schedule.state(s)) for x, s in zip(latents, schedulers, strict=True)]

    # -- VAE ------------------------------------------------------------------------------------
    def encoder_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Checked ``uint8 (T, H, W, 3)`` frames padded to ``1 + f*k`` by repeating the last one
        (the VAEs' encoders read whole groups)."""
        frames = torch.as_tensor(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        s = self.card.geometry.spatial_factor
        if frames.shape[1] % s or frames.shape[2] % s:
            raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be a multiple of {s}")
        missing = self.geometry.time_grid.ceil_start(frames.shape[0]) - frames.shape[0]
        return torch.cat([frames, frames[-1:].expand(missing, -1, -1, -1)]) if missing else frames

    def check_decode(self, latents: torch.Tensor, context_frames: int) -> None:
        c = self.card.geometry.latent_channels
        if latents.ndim != 4 or latents.shape[0] != c:
            raise ValueError(f"latents must be ({c}, T, H, W), got {tuple(latents.shape)}")
        if not 0 <= context_frames < latents.shape[1]:
            raise ValueError(f"context_frames must be in [0, {latents.shape[1]}), got {context_frames}")

    def frames_after(self, video: torch.Tensor, context_frames: int) -> torch.Tensor:
        """A decoded ``(1, 3, T, H, W)`` video through the pipeline's processor, without the
        pixels of the ``context_frames`` latent frames of causal context."""
        return video_to_uint8(self.pipe.video_processor, video)[self.geometry.time_grid.pixel_start(context_frames):]


# -- given images -----------------------------------------------------------------------------
def first_frame_image(request: ConditioningRequest, card: ModelCard, pipeline: str):
    """check_inputs of the families whose pipelines condition on one image, the first frame: the
    request's image at pixel frame 0 as the PIL image the pipeline's ``__call__`` takes, after
    checking the request (one image, at frame 0, of the video's size, on the frame-count rule)."""
    from PIL import Image

    if set(request.images) != {0}:
        raise ValueError(f"model {card.name} ({pipeline}) conditions on one image at the first frame; "
                         f"got images at frames {sorted(request.images)}")
    image = torch.as_tensor(request.images[0])
    if image.dtype != torch.uint8 or tuple(image.shape) != (request.height, request.width, 3):
        raise ValueError(f"the image must be uint8 ({request.height}, {request.width}, 3), got {image.dtype} {tuple(image.shape)}")
    grid = card.geometry.time_grid
    if request.num_frames < 1 or grid.pixel_frames(grid.latent_frames(request.num_frames)) != request.num_frames:
        raise ValueError(f"num_frames must be 1 + {grid.temporal_factor}k, got {request.num_frames}")
    multiple = card.geometry.size_multiple
    if request.height % multiple or request.width % multiple:
        raise ValueError(f"size {request.width}x{request.height} must be a multiple of {multiple}")
    return Image.fromarray(image.numpy())


# -- frames ------------------------------------------------------------------------------------
def video_to_uint8(video_processor, video: torch.Tensor) -> torch.Tensor:
    """A decoded ``(1, 3, T, H, W)`` video in [-1, 1] to ``uint8 (T, H, W, 3)`` through the
    pipeline's own post-processing (the values its 'np' output has, scaled to 0..255 and rounded
    as its 'pil' output is)."""
    frames = video_processor.postprocess_video(video, output_type="pt")[0]  # (T, 3, H, W) in [0, 1]
    return (frames.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


def uint8_to_video(video_processor, frames: torch.Tensor) -> torch.Tensor:
    """``uint8 (T, H, W, 3)`` frames to the pipeline's ``(1, 3, T, H, W)`` input in [-1, 1], as its
    processor makes it from PIL frames (``x / 255``, then ``2x - 1``)."""
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    array = frames.numpy().astype("float32") / 255.0
    return video_processor.preprocess_video(array, height=frames.shape[1], width=frames.shape[2])
