"""Prompt expansion backends: a short prompt becomes the detailed caption the video model sees.

Video models are trained on long, detailed captions, and people type short prompts; a
re-captioner bridges the two (the DALL-E 3 technique). Three backends share one interface:

* :class:`BuiltinExpander`: the model family's deterministic rule-based re-captioner. Needs
  no weights and no network; the embedded default, and the fallback of the other two.
* :class:`HFCausalLMExpander`: a Hugging Face causal language model from a local folder,
  greedy decoding (deterministic).
* :class:`OpenAIChatExpander`: any OpenAI-compatible chat completions endpoint (vLLM,
  ``ray.serve.llm``, a hosted API), with timeouts and retries.

A language-model backend never fails a job: when it errors out or returns something unusable,
the built-in caption is used and :attr:`Expansion.note` says why (the job manifest keeps it).
The language model sees the built-in caption as a reference, so its answer stays in the style
the video model was trained on and keeps every attribute the prompt names.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import json
import re
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path

from tessera.models.interface import VideoModel
from tessera.serving.config import ExpansionConfig, HFExpansionConfig, OpenAIExpansionConfig

DEFAULT_INSTRUCTION = (
    "You write captions for a text-to-video model. Rewrite the user's short prompt as one detailed "
    "caption of a single paragraph: the subject and its appearance, what it does and how fast, the "
    "background, and the camera. Keep every detail of the prompt and of the reference caption and "
    "contradict none of them. Answer with the caption only."
)


@dataclasses.dataclass(frozen=True)
class Expansion:
    """What an expander made of one prompt."""

    caption: str
    """The caption the video model will see."""
    backend: str
    """The backend that wrote the caption: 'builtin', 'hf_causal_lm', 'openai', or
    'builtin (fallback from <backend>)'."""
    note: str = ""
    """Why a fallback happened (empty when none did), e.g. 'openai: timed out after 2 attempts'."""


class Expander(abc.ABC):
    """Turns a short prompt (one shot of a multi-shot video) into a detailed caption.

    ``character`` is a description shared by every shot of one video; each shot's caption
    carries it, so the subject looks the same throughout.
    """

    name: str
    runs_torch: bool = False
    """True: call :meth:`expand` on the replica's model thread (it runs torch)."""
    blocking: bool = False
    """True: :meth:`expand` waits on I/O; call it off the event loop."""

    @abc.abstractmethod
    def expand(self, prompt: str, character: str = "") -> Expansion: ...


class BuiltinExpander(Expander):
    """The model family's deterministic re-captioner (``VideoModel.expand``)."""

    name = "builtin"

    def __init__(self, model: VideoModel):
        self.model = model

    def expand(self, prompt: str, character: str = "") -> Expansion:
        return Expansion(self.model.expand(prompt, character=character.strip()), self.name)

    def fallback(self, prompt: str, character: str, failed_backend: str, reason: str) -> Expansion:
        """The built-in caption, labelled as a fallback from ``failed_backend`` with the reason."""
        caption = self.expand(prompt, character).caption
        return Expansion(caption, f"builtin (fallback from {failed_backend})", f"{failed_backend}: {reason}")


# -- what language-model backends share ------------------------------------------------------


def user_message(prompt: str, character: str, reference: str) -> str:
    """The request for one caption: the prompt, the shared character, and the built-in caption."""
    lines = [f"Short prompt: {prompt.strip()}"]
    if character.strip():
        lines.append(f"Character in every shot (describe exactly like this): {character.strip()}")
    lines.append(f"Reference caption in the video model's style: {reference}")
    return "\n".join(lines)


# Reasoning models think aloud first; an unclosed block (cut off by the token limit) holds no caption.
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:detailed\s+)?caption\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019"


def clean_caption(text: str) -> str:
    """A language model's answer reduced to the caption: reasoning blocks, a 'Caption:' label,
    surrounding quotes and anything after the first blank line removed, whitespace collapsed."""
    text = _THINKING.sub("", text).strip()
    text = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    text = _LABEL.sub("", text).strip().strip(_QUOTES).strip()
    return " ".join(text.split())


def caption_problem(caption: str, min_words: int) -> str | None:
    """Why a cleaned caption is unusable (empty, too short, not text, looping), or None if it is fine."""
    if not caption:
        return "empty output"
    words = caption.split()
    if len(words) < min_words:
        return f"output too short ({len(words)} words, at least {min_words} needed)"
    letters = sum(character.isalpha() for character in caption)
    if letters < 0.5 * len(caption.replace(" ", "")):
        return "output is not text"
    # Degenerate decoding loops on one or two words ("ball ball ball ...").
    if len(words) >= 8 and len({word.lower() for word in words}) / len(words) < 0.3:
        return "output repeats itself"
    return None


def carry_character(caption: str, character: str) -> str:
    """The caption with the shared character description appended if it does not already hold it."""
    character = character.strip()
    if not character or character.lower().rstrip(".") in caption.lower():
        return caption
    return f"{caption} Character: {character.rstrip('.')}."


# -- Hugging Face causal LM ------------------------------------------------------------------


class HFCausalLMExpander(Expander):
    """A local Hugging Face causal LM, greedy decoding; unusable output falls back to the built-in caption."""

    name = "hf_causal_lm"
    runs_torch = True

    def __init__(self, config: HFExpansionConfig, builtin: BuiltinExpander, instruction: str = DEFAULT_INSTRUCTION):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_model_folder(config.path)
        self.config = config
        self.builtin = builtin
        self.instruction = instruction
        self.tokenizer = AutoTokenizer.from_pretrained(config.path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(
            config.path, local_files_only=True, dtype=getattr(torch, config.dtype)
        ).to(config.device).eval()
        self.generation_config = self._greedy(self.model.generation_config)

    def _greedy(self, base):
        """The model's own generation settings (eos/pad ids) with sampling switched off."""
        greedy = copy.deepcopy(base)
        greedy.do_sample = False
        greedy.num_beams = 1
        greedy.temperature = greedy.top_p = greedy.top_k = None
        greedy.max_new_tokens = self.config.max_new_tokens
        if greedy.eos_token_id is None:
            greedy.eos_token_id = self.tokenizer.eos_token_id
        if greedy.pad_token_id is None:
            pad = self.tokenizer.pad_token_id
            greedy.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id
        return greedy

    def model_input(self, prompt: str, character: str = "") -> str:
        """The text the language model continues: its chat template when the tokenizer has one,
        else the instruction and request as plain text ending in 'Caption:'."""
        reference = self.builtin.expand(prompt, character).caption
        request = user_message(prompt, character, reference)
        if self.tokenizer.chat_template:
            # One user turn: not every chat template accepts a system role.
            messages = [{"role": "user", "content": f"{self.instruction}\n\n{request}"}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"{self.instruction}\n\n{request}\nCaption:"

    def generate(self, text: str) -> str:
        """Greedy continuation of ``text``, decoded without special tokens."""
        import torch

        # A chat template writes its own special tokens; plain text gets the tokenizer's usual ones.
        add_special = not self.tokenizer.chat_template
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=add_special).to(self.config.device)
        with torch.inference_mode():
            output = self.model.generate(**encoded, generation_config=self.generation_config)
        new_tokens = output[0, encoded["input_ids"].shape[1] :]  # (new,)
        return self.tokenizer.decode(new_tokens, skip_special_tokens=True)

    def expand(self, prompt: str, character: str = "") -> Expansion:
        caption = clean_caption(self.generate(self.model_input(prompt, character)))
        problem = caption_problem(caption, self.config.min_words)
        if problem is not None:
            return self.builtin.fallback(prompt, character, self.name, problem)
        return Expansion(carry_character(caption, character), self.name)


def check_model_folder(path: Path) -> None:
    """Raise a clear error at start when the configured model folder is not there."""
    if not path.is_dir():
        raise ValueError(f"expansion.hf.path {path} is not a folder on this node")
    if not (path / "config.json").is_file():
        raise ValueError(f"expansion.hf.path {path} has no config.json (expected a save_pretrained folder)")


# -- OpenAI-compatible chat endpoint -------------------------------------------------------


class _Retryable(Exception):
    """An attempt failed in a way another attempt may not (timeout, connection, 5xx, 429)."""


class _Final(Exception):
    """An attempt failed in a way retrying will not fix (4xx, malformed answer)."""


class OpenAIChatExpander(Expander):
    """An OpenAI-compatible ``/chat/completions`` endpoint over plain HTTP(S), with retries and fallback."""

    name = "openai"
    blocking = True

    def __init__(self, config: OpenAIExpansionConfig, builtin: BuiltinExpander, instruction: str = DEFAULT_INSTRUCTION):
        self.config = config
        self.builtin = builtin
        self.instruction = instruction
        self.url = config.base_url.rstrip("/") + "/chat/completions"

    def request_body(self, prompt: str, character: str = "") -> dict:
        reference = self.builtin.expand(prompt, character).caption
        return {
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": self.instruction},
                {"role": "user", "content": user_message(prompt, character, reference)},
            ],
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }

    def expand(self, prompt: str, character: str = "") -> Expansion:
        try:
            answer = self._ask(json.dumps(self.request_body(prompt, character)).encode())
        except _Final as error:
            return self.builtin.fallback(prompt, character, self.name, str(error))
        caption = clean_caption(answer)
        problem = caption_problem(caption, self.config.min_words)
        if problem is not None:
            return self.builtin.fallback(prompt, character, self.name, problem)
        return Expansion(carry_character(caption, character), self.name)

    def _ask(self, body: bytes) -> str:
        """The endpoint's answer, retrying transient failures with exponential backoff."""
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                return self._post(body)
            except _Retryable as error:
                failure = error
        raise _Final(f"{failure} after {attempts} attempt{'s' if attempts > 1 else ''}")

    def _post(self, body: bytes) -> str:
        """One attempt: the answer's message content, or :class:`_Retryable`/:class:`_Final`."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key is not None:
            headers["Authorization"] = f"Bearer {self.config.api_key.get_secret_value()}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:  # before URLError: it is a subclass
            detail = _error_detail(error)
            if error.code >= 500 or error.code == 429:
                raise _Retryable(f"HTTP {error.code}{detail}") from None
            raise _Final(f"HTTP {error.code}{detail} (not retried)") from None
        except TimeoutError:
            raise _Retryable("timed out") from None
        except urllib.error.URLError as error:
            if isinstance(error.reason, TimeoutError):
                raise _Retryable("timed out") from None
            raise _Retryable(f"connection failed ({error.reason})") from None
        except (OSError, HTTPException) as error:
            raise _Retryable(f"connection failed ({type(error).__name__}: {error})") from None
        return _message_content(payload)


def _error_detail(error: urllib.error.HTTPError) -> str:
    """': <first 200 characters of the error body>' for the note, or '' when there is none."""
    try:
        text = error.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f": {text[:200]}" if text else ""


def _message_content(payload: bytes) -> str:
    """``choices[0].message.content`` of a chat completion, or :class:`_Final`."""
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise _Final(f"malformed response ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(content, str):
        raise _Final(f"malformed response (message content is {type(content).__name__}, not text)")
    return content


# -- factory -----------------------------------------------------------------------------------


def build_expander(config: ExpansionConfig, model: VideoModel) -> Expander:
    """The configured backend, with the model family's built-in expander as its fallback."""
    builtin = BuiltinExpander(model)
    instruction = config.instruction or DEFAULT_INSTRUCTION
    if config.backend == "hf_causal_lm":
        return HFCausalLMExpander(config.hf, builtin, instruction)
    if config.backend == "openai":
        return OpenAIChatExpander(config.openai, builtin, instruction)
    return builtin
