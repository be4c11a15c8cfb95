"""Prompt expansion backends: built-in, local Hugging Face causal LM, OpenAI-compatible endpoint.

The language models here are real transformers models built from tiny configs (nothing is
downloaded); the chat endpoint is a real HTTP server on localhost whose answers each test scripts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from tessera.models.config import NativeModelConfig
from tessera.models.registry import load_model
from tessera.models.shapes import captions
from tessera.models.shapes.captions import parse_prompt
from tessera.serving.config import ExpansionConfig, HFExpansionConfig, OpenAIExpansionConfig
from tessera.serving.expansion import (
    BuiltinExpander,
    HFCausalLMExpander,
    OpenAIChatExpander,
    build_expander,
    carry_character,
    clean_caption,
)
from tessera.serving.prompt_expander import PromptExpanderEngine
from tests.helpers import free_port

CHARACTER = "a large magenta square named Pip"
SHOTS = ["moves left fast", "a blue ball bounces on a white background", "drifting up slowly"]


@pytest.fixture(scope="module")
def model():
    """The shipped family with no parts loaded: its built-in expander needs no weights."""
    return load_model(NativeModelConfig(allow_random_weights=True), parts=())


@pytest.fixture(scope="module")
def builtin(model) -> BuiltinExpander:
    return BuiltinExpander(model)


# -- built-in ------------------------------------------------------------------------------------


def test_builtin_is_deterministic_and_detailed(builtin, model):
    first = builtin.expand("red ball going left, fast")
    again = BuiltinExpander(model).expand("red ball going left, fast")
    assert first == again
    assert first.backend == "builtin" and first.note == ""
    assert first.caption == model.expand("red ball going left, fast")
    assert len(first.caption.split()) > 3 * len("red ball going left, fast".split())
    assert parse_prompt(first.caption) == {"colour": "red", "shape": "circle", "speed": "fast", "motion": "left"}


def test_builtin_carries_the_shared_character_through_every_shot(builtin):
    expected_motion = ["left", "bounce", "up"]
    for shot, motion in zip(SHOTS, expected_motion):
        caption = builtin.expand(shot, CHARACTER).caption
        attributes = parse_prompt(caption)
        # The character fixes what the subject is; the shot decides what it does.
        assert (attributes["colour"], attributes["shape"], attributes["size"]) == ("magenta", "square", "large")
        assert attributes["motion"] == motion
        assert CHARACTER in caption
    assert "white background" in builtin.expand(SHOTS[1], CHARACTER).caption
    assert builtin.expand(SHOTS[0], CHARACTER) == builtin.expand(SHOTS[0], CHARACTER)


def test_shapes_expand_takes_identity_from_the_character_and_action_from_the_shot():
    # The shapes family's own expander with a character (what its built-in expander uses).
    caption = captions.expand("a blue ball moves left fast", "a bouncing large magenta square named Pip")
    assert parse_prompt(caption) == {"size": "large", "colour": "magenta", "shape": "square", "speed": "fast", "motion": "left"}
    assert caption.endswith(" Character: a bouncing large magenta square named Pip.")
    assert captions.expand("drifting up", "a bouncing red ball named Pip").count("Character:") == 1
    # A character made only of words the world knows lives in the template alone.
    assert captions.expand("moves right", "a small green circle") == captions.expand("a small green circle moves right")
    assert captions.expand("red ball left", "") == captions.expand("red ball left")


def test_carry_character_appends_only_what_is_missing():
    assert carry_character("A red circle moves left.", "") == "A red circle moves left."
    assert carry_character("Pip, a red circle, moves left.", "a red circle") == "Pip, a red circle, moves left."
    assert carry_character("A circle moves left.", "a red circle.") == "A circle moves left. Character: a red circle."


def test_clean_caption_strips_reasoning_labels_quotes_and_afterthoughts():
    answer = '<think>short prompt, so\n\nadd detail</think>\nCaption: "A red circle   moves\nleft."\n\nNote: I kept it short.'
    assert clean_caption(answer) == "A red circle moves left."
    assert clean_caption("<think>the user wants a red circle, so I") == ""


# -- Hugging Face causal LM ----------------------------------------------------------------------

SPECIAL_TOKENS = ["[UNK]", "[PAD]", "<s>", "</s>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# What the bigram model says after the chat template's last token, and after plain text's
# last token ':' ("Caption:"). No word repeats, and the two share none: a bigram chain.
CHAT_CAPTION = "a small red circle moves quickly to the left across plain black background"
PLAIN_CAPTION = "big blue square bounces slowly on white"


def build_tokenizer(chat_template: str | None):
    """A word-level tokenizer trained on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    sentences = [CHAT_CAPTION, PLAIN_CAPTION, "short prompt : caption ball"]
    tokenizer.train_from_iterator(sentences, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )
    wrapped.chat_template = chat_template
    return wrapped


def tiny_llama_config(vocab_size: int, hidden_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=2, eos_token_id=3, pad_token_id=1, tie_word_embeddings=False,
    )


def save_bigram_model(folder: Path, tokenizer, successors: dict[str, str]) -> Path:
    """A real Llama causal LM whose weights make greedy decoding follow a bigram table.

    Attention and MLP outputs are zero, so the residual stream at the last position is that
    token's embedding; embeddings are one-hot and the LM head maps token ``a`` to
    ``successors[a]`` (every other token to end-of-sequence). Saved with the tokenizer."""
    from transformers import LlamaForCausalLM

    vocab = tokenizer.get_vocab()
    size = len(vocab)
    hidden = -(-size // 8) * 8  # rotary embeddings need an even head size
    model = LlamaForCausalLM(tiny_llama_config(size, hidden))
    next_token = {index: vocab["</s>"] for index in range(size)}
    next_token.update({vocab[a]: vocab[b] for a, b in successors.items()})
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.fill_(1.0 if "norm" in name else 0.0)
        model.model.embed_tokens.weight.copy_(torch.eye(size, hidden))
        for token, successor in next_token.items():
            model.lm_head.weight[successor, token] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def chain(start: str, text: str) -> dict[str, str]:
    words = [start, *text.split(), "</s>"]
    return dict(zip(words, words[1:]))


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory) -> dict[str, Path]:
    """Model folders: one bigram model behind a chat and a plain tokenizer, broken ones, a random one."""
    root = tmp_path_factory.mktemp("lms")
    both = {**chain("<|assistant|>", CHAT_CAPTION), **chain(":", PLAIN_CAPTION)}
    chat, plain = build_tokenizer(CHAT_TEMPLATE), build_tokenizer(None)
    folders = {
        "chat": save_bigram_model(root / "chat", chat, both),
        "plain": save_bigram_model(root / "plain", plain, both),
        "silent": save_bigram_model(root / "silent", chat, {}),
        "looping": save_bigram_model(root / "looping", chat, {"<|assistant|>": "ball", "ball": "ball"}),
        "terse": save_bigram_model(root / "terse", chat, chain("<|assistant|>", "ball")),
    }
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    random_model = LlamaForCausalLM(tiny_llama_config(len(plain.get_vocab()), 32))
    random_model.save_pretrained(root / "random")
    plain.save_pretrained(root / "random")
    folders["random"] = root / "random"
    return folders


def hf_expander(folder: Path, builtin: BuiltinExpander, **fields) -> HFCausalLMExpander:
    return HFCausalLMExpander(HFExpansionConfig(path=folder, max_new_tokens=24, **fields), builtin)


def test_hf_uses_the_chat_template_when_the_tokenizer_has_one(lm_folders, builtin):
    expander = hf_expander(lm_folders["chat"], builtin)
    model_input = expander.model_input("red ball left")
    assert model_input.startswith("<|user|> ") and model_input.endswith("<|assistant|>")
    assert "Reference caption in the video model's style: A red circle moves to the left" in model_input
    expansion = expander.expand("red ball left")
    assert (expansion.caption, expansion.backend, expansion.note) == (CHAT_CAPTION, "hf_causal_lm", "")


def test_hf_uses_plain_text_without_a_chat_template(lm_folders, builtin):
    expander = hf_expander(lm_folders["plain"], builtin)
    assert expander.model_input("red ball left").endswith("\nCaption:")
    assert expander.expand("red ball left") == expander.expand("red ball left")
    assert expander.expand("red ball left").caption == PLAIN_CAPTION


def test_hf_carries_the_character(lm_folders, builtin):
    expander = hf_expander(lm_folders["chat"], builtin)
    assert f"(describe exactly like this): {CHARACTER}" in expander.model_input("moves left", CHARACTER)
    # This model ignores the character, so the expander appends it.
    assert expander.expand("moves left", CHARACTER).caption == f"{CHAT_CAPTION} Character: {CHARACTER}."


@pytest.mark.parametrize(
    "folder, reason",
    [
        ("silent", "empty output"),
        ("looping", "output repeats itself"),
        ("terse", "output too short (1 words, at least 3 needed)"),
    ],
)
def test_hf_unusable_output_falls_back_to_builtin(lm_folders, builtin, folder, reason):
    expansion = hf_expander(lm_folders[folder], builtin).expand("red ball left", CHARACTER)
    assert expansion.caption == builtin.expand("red ball left", CHARACTER).caption
    assert expansion.backend == "builtin (fallback from hf_causal_lm)"
    assert expansion.note == f"hf_causal_lm: {reason}"


def test_hf_random_weights_run_deterministically(lm_folders, builtin):
    first = hf_expander(lm_folders["random"], builtin).expand("red ball left", CHARACTER)
    second = hf_expander(lm_folders["random"], builtin).expand("red ball left", CHARACTER)
    assert first == second
    if first.backend == "hf_causal_lm":
        assert first.note == ""
    else:
        assert first.backend == "builtin (fallback from hf_causal_lm)" and first.note.startswith("hf_causal_lm: ")
    assert CHARACTER in first.caption


def test_hf_missing_model_folder_is_a_clear_error_at_start(tmp_path, builtin):
    with pytest.raises(ValueError, match="expansion.hf.path .* is not a folder"):
        hf_expander(tmp_path / "nowhere", builtin)
    with pytest.raises(ValueError, match="has no config.json"):
        hf_expander(tmp_path, builtin)


# -- OpenAI-compatible endpoint ------------------------------------------------------------------


class ChatServer:
    """A real OpenAI-compatible chat endpoint on localhost; each test scripts its replies in order.

    Replies: ``("ok", content)``, ``("status", code)``, ``("slow", content)`` (answers only once
    released, i.e. after the test), ``("raw", body_bytes)``."""

    def __init__(self):
        self.replies: list[tuple[str, object]] = []
        self.requests: list[dict] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), self._handler())
        self.httpd.daemon_threads = False  # server_close joins handler threads
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def script(self, *replies: tuple[str, object]) -> None:
        with self.lock:
            self.replies = list(replies)
            self.requests = []
        self.release = threading.Event()

    def next_reply(self, request: dict) -> tuple[str, object]:
        with self.lock:
            self.requests.append(request)
            return self.replies.pop(0) if self.replies else ("status", 599)

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                kind, value = server.next_reply(
                    {"path": self.path, "authorization": self.headers.get("Authorization"), "body": json.loads(body)}
                )
                if kind == "slow":
                    server.release.wait(30)
                    kind = "ok"
                if kind == "ok":
                    payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": value}}]})
                    self._send(200, payload.encode())
                elif kind == "status":
                    self._send(value, json.dumps({"error": {"message": f"scripted {value}"}}).encode())
                else:
                    self._send(200, value)

            def _send(self, code: int, payload: bytes):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

        return Handler


@pytest.fixture(scope="module")
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer()
    yield server
    server.stop()


@pytest.fixture
def chat(chat_server) -> Iterator[ChatServer]:
    yield chat_server
    chat_server.release.set()  # slow replies of this test answer now, into closed sockets


ANSWER = "A red circle glides steadily to the left over a plain black background while the camera stays still."


def openai_config(base_url: str, **fields) -> OpenAIExpansionConfig:
    defaults = {"model": "captioner", "api_key": "sk-test", "timeout_s": 2.0, "max_retries": 2, "backoff_s": 0.01}
    return OpenAIExpansionConfig(base_url=base_url, **{**defaults, **fields})


def test_openai_returns_the_endpoint_caption(chat, builtin):
    chat.script(("ok", f"Caption: {ANSWER}"))
    expansion = OpenAIChatExpander(openai_config(chat.base_url), builtin).expand("red ball left")
    assert (expansion.caption, expansion.backend, expansion.note) == (ANSWER, "openai", "")
    [request] = chat.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == "Bearer sk-test"
    assert request["body"]["model"] == "captioner" and request["body"]["temperature"] == 0.0
    system, user = request["body"]["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert "Short prompt: red ball left" in user["content"]
    assert builtin.expand("red ball left").caption in user["content"]


def test_openai_sends_no_authorization_without_a_key(chat, builtin):
    chat.script(("ok", ANSWER))
    OpenAIChatExpander(openai_config(chat.base_url, api_key=None), builtin).expand("red ball left")
    assert chat.requests[0]["authorization"] is None


def test_openai_retries_a_server_error(chat, builtin):
    chat.script(("status", 500), ("ok", ANSWER))
    expansion = OpenAIChatExpander(openai_config(chat.base_url), builtin).expand("red ball left")
    assert (expansion.caption, expansion.backend) == (ANSWER, "openai")
    assert len(chat.requests) == 2


def test_openai_timeouts_are_retried_then_fall_back(chat, builtin):
    chat.script(("slow", ANSWER), ("slow", ANSWER), ("ok", ANSWER))
    config = openai_config(chat.base_url, timeout_s=0.3, max_retries=1)
    expansion = OpenAIChatExpander(config, builtin).expand("red ball left", CHARACTER)
    assert expansion.backend == "builtin (fallback from openai)"
    assert expansion.note == "openai: timed out after 2 attempts"
    assert expansion.caption == builtin.expand("red ball left", CHARACTER).caption
    assert len(chat.requests) == 2


def test_openai_client_errors_are_not_retried(chat, builtin):
    chat.script(("status", 401), ("ok", ANSWER))
    expansion = OpenAIChatExpander(openai_config(chat.base_url), builtin).expand("red ball left")
    assert expansion.backend == "builtin (fallback from openai)"
    assert expansion.note.startswith("openai: HTTP 401: ") and expansion.note.endswith("(not retried)")
    assert "scripted 401" in expansion.note
    assert len(chat.requests) == 1


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "malformed response (JSONDecodeError"),
        (b'{"choices": []}', "malformed response (IndexError"),
        (b'{"choices": [{"message": {"content": null}}]}', "malformed response (message content is NoneType"),
    ],
)
def test_openai_malformed_answers_fall_back(chat, builtin, body, reason):
    chat.script(("raw", body))
    expansion = OpenAIChatExpander(openai_config(chat.base_url), builtin).expand("red ball left")
    assert expansion.backend == "builtin (fallback from openai)"
    assert expansion.note.startswith(f"openai: {reason}")
    assert len(chat.requests) == 1


def test_openai_unusable_caption_falls_back(chat, builtin):
    chat.script(("ok", "  Sure!  "))
    expansion = OpenAIChatExpander(openai_config(chat.base_url), builtin).expand("red ball left")
    assert expansion.note == "openai: output too short (1 words, at least 3 needed)"


def test_openai_unreachable_endpoint_falls_back(builtin):
    config = openai_config(f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    expansion = OpenAIChatExpander(config, builtin).expand("red ball left")
    assert expansion.backend == "builtin (fallback from openai)"
    assert expansion.note.startswith("openai: connection failed (") and expansion.note.endswith("after 2 attempts")


# -- the PromptExpander stage ------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_engine(chat_server) -> PromptExpanderEngine:
    expansion = ExpansionConfig(backend="openai", openai=openai_config(chat_server.base_url, max_retries=0))
    return PromptExpanderEngine(NativeModelConfig(allow_random_weights=True), expansion)


def test_stage_reports_the_backend_used(chat, openai_engine, builtin):
    chat.script(("ok", ANSWER), ("status", 503))
    expanded = asyncio.run(openai_engine.condition("red ball left", "", expand=True))
    assert (expanded.caption, expanded.expander, expanded.expansion_note) == (ANSWER, "openai", "")
    # What the denoiser gets is the encoding of the expanded caption.
    assert torch.allclose(expanded.text.tokens, openai_engine.model.encode_text([ANSWER])[0].tokens, atol=1e-5)

    fallback = asyncio.run(openai_engine.condition("red ball left", "", expand=True, character=CHARACTER))
    assert fallback.caption == builtin.expand("red ball left", CHARACTER).caption
    assert fallback.expander == "builtin (fallback from openai)"
    assert fallback.expansion_note.startswith("openai: HTTP 503")

    skipped = asyncio.run(openai_engine.condition("red ball left", "", expand=False))
    assert (skipped.caption, skipped.expander, skipped.expansion_note) == ("red ball left", "none", "")
    assert len(chat.requests) == 2


def test_stage_runs_a_local_language_model(lm_folders):
    expansion = ExpansionConfig(backend="hf_causal_lm", hf={"path": lm_folders["chat"], "max_new_tokens": 24})
    engine = PromptExpanderEngine(NativeModelConfig(allow_random_weights=True), expansion)
    expanded = asyncio.run(engine.condition("red ball left", "blurry", expand=True))
    assert (expanded.caption, expanded.expander, expanded.expansion_note) == (CHAT_CAPTION, "hf_causal_lm", "")
    # (batched with the caption, so equal up to float rounding)
    assert torch.allclose(expanded.negative_text.tokens, engine.model.encode_text(["blurry"])[0].tokens, atol=1e-5)


def test_build_expander_picks_the_configured_backend(lm_folders, model, chat):
    assert isinstance(build_expander(ExpansionConfig(), model), BuiltinExpander)
    hf = build_expander(ExpansionConfig(backend="hf_causal_lm", hf={"path": lm_folders["chat"]}, instruction="Be brief."), model)
    assert isinstance(hf, HFCausalLMExpander) and hf.model_input("red ball").startswith("<|user|> Be brief.")
    openai = build_expander(ExpansionConfig(backend="openai", openai=openai_config(chat.base_url)), model)
    assert isinstance(openai, OpenAIChatExpander) and openai.blocking and not openai.runs_torch


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"backend": "hf_causal_lm"}, "backend is 'hf_causal_lm' but the expansion.hf section is missing"),
        ({"backend": "openai"}, "backend is 'openai' but the expansion.openai section is missing"),
        ({"openai": {"base_url": "http://llm/v1", "model": "m"}}, "expansion.openai is set but expansion.backend is 'builtin'"),
        ({"backend": "vllm"}, "Input should be 'builtin', 'hf_causal_lm' or 'openai'"),
        ({"instruction": "Be brief."}, "instruction only applies to"),
        ({"backend": "openai", "openai": {"base_url": "llm:8000/v1", "model": "m"}}, "String should match pattern"),
        ({"backend": "openai", "openai": {"base_url": "http://llm/v1", "model": "m", "timeout_s": 0}}, "greater than 0"),
        ({"backend": "openai", "openai": {"base_url": "http://llm/v1", "model": "m", "retries": 3}}, "Extra inputs are not permitted"),
        ({"backend": "hf_causal_lm", "hf": {"path": "/m", "device": "gpu"}}, "String should match pattern"),
    ],
)
def test_config_rejects(fields, message):
    with pytest.raises(ValidationError, match=message):
        ExpansionConfig.model_validate(fields)


def test_config_keeps_the_key_secret():
    config = ExpansionConfig.model_validate(
        {"backend": "openai", "openai": {"base_url": "https://api.example.com/v1", "model": "m", "api_key": "sk-secret"}}
    )
    assert "sk-secret" not in repr(config) and "sk-secret" not in config.model_dump_json()
    assert config.openai.api_key.get_secret_value() == "sk-secret"
    assert ExpansionConfig().backend == "builtin"
