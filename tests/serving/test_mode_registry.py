"""The generation-mode registry: every mode registered once, and the only place modes are told apart.

Each mode's rules live in one module of ``serving/jobs/modes/``; the rest of serving asks the
registry (``rules_for``) instead of comparing modes, so that adding a mode touches one module.
The tests below hold the registry complete and consistent with the request's fields, the API
and the model card, and read every other module's syntax tree for a mode comparison.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from tessera.models.interface import MODES, LatentGeometry, ModelCapabilities, ModelCard, ModelLimits
from tessera.serving.api import tessera_pb2 as pb
from tessera.serving.api.convert import mode_to_proto
from tessera.serving.batches.spec import parse_batch
from tessera.serving.config import LimitsConfig
from tessera.serving.errors import FailedPreconditionError
from tessera.serving.jobs import modes
from tessera.serving.jobs.modes.base import Length, ModeRules
from tessera.serving.jobs.spec import GenerationRequest, MediaInput, Mode, ShotRequest
from tessera.serving.jobs.validation import resolve_request

ROOT = Path(__file__).resolve().parents[2]
MODES_PACKAGE = ROOT / "serving" / "jobs" / "modes"
ALLOWED_MEMBER_USES = {("serving/jobs/spec.py", "TEXT_TO_VIDEO")}
"""``Mode.X`` outside the registry that picks no behaviour: RenderSpec's default mode (old records)."""

CARD = ModelCard(
    family="native", name="test", version="0",
    geometry=LatentGeometry(latent_channels=8, spatial_factor=8, temporal_factor=4, patch_size=(1, 2, 2), native_window=8,
                            decode_context=4),
    limits=ModelLimits(min_side=32, max_side=256, max_image_side=256, min_fps=6, max_fps=12, default_fps=8,
                       default_width=64, default_height=64, default_steps=20, max_steps=100,
                       default_guidance_scale=4.0, max_prompt_tokens=128),
)


def test_every_mode_has_exactly_one_registered_implementation_in_the_enums_order():
    assert list(modes.REGISTRY) == list(Mode)
    for mode, rules in modes.REGISTRY.items():
        assert isinstance(rules, ModeRules) and rules.mode is mode
        assert modes.rules_for(mode) is rules
    assert len({type(rules) for rules in modes.REGISTRY.values()}) == len(Mode)


def test_each_mode_lives_in_a_module_of_its_own_named_after_it():
    for mode, rules in modes.REGISTRY.items():
        assert type(rules).__module__ == f"tessera.serving.jobs.modes.{mode.value}"


def test_the_model_cards_mode_names_are_the_specs():
    assert MODES == tuple(mode.value for mode in Mode)
    assert ModelCapabilities().modes == frozenset(MODES)


def test_every_mode_maps_to_its_own_api_value():
    values = {mode: mode_to_proto(mode) for mode in Mode}
    assert len(set(values.values())) == len(Mode)
    assert set(values.values()) == set(pb.GenerationMode.values()) - {pb.MODE_UNSPECIFIED}


def test_request_fields_are_claimed_by_the_modes_consistently():
    fields = GenerationRequest.model_fields
    media_fields = tuple(name for name, field in fields.items() if MediaInput in typing.get_args(field.annotation))
    assert modes.MEDIA_FIELDS == media_fields
    claimed = [name for rules in modes.REGISTRY.values() for name in (*rules.selected_by, *rules.options)]
    assert len(claimed) == len(set(claimed)), "a field selects (or applies to) one mode only"
    assert set(claimed) <= set(fields)
    for rules in modes.REGISTRY.values():
        assert set(rules.inputs) <= set(rules.selected_by), f"{rules.mode.value}: each input selects its mode"
        assert (rules.length is Length.OWN) == bool(rules.own_length_reason), rules.mode.value
    unselected = [rules.mode for rules in modes.REGISTRY.values() if not rules.selected_by]
    assert unselected == [modes.DEFAULT_MODE]


def test_a_mode_the_card_does_not_list_is_a_failed_precondition_naming_the_model():
    served = ModelCapabilities(modes=frozenset({"text_to_video", "image"}))
    card = dataclasses.replace(CARD, name="t2v-only", capabilities=served)
    resolve_request(GenerationRequest(prompt="x"), card, LimitsConfig())
    refused = r"^model t2v-only does not support loop \(it supports text_to_video, image\)$"
    with pytest.raises(FailedPreconditionError, match=refused):
        resolve_request(GenerationRequest(prompt="x", loop=True), card, LimitsConfig())
    with pytest.raises(FailedPreconditionError, match="^model t2v-only does not support multi_shot "):
        resolve_request(GenerationRequest(shots=(ShotRequest(prompt="x", duration_s=1),)), card, LimitsConfig())
    # A batch line is checked the same way, and only that line is refused.
    lines = (b'{"prompt": "x", "loop": true}\n'
             b'{"prompt": "x", "extend_video": "s3://b/default/a.mp4", "extend_seconds": 1}\n'
             b'{"prompt": "x"}\n')
    parsed = parse_batch(lines, card, LimitsConfig())
    assert [line.error.split(" (")[0] for line in parsed.invalid] == [
        "model t2v-only does not support loop", "model t2v-only does not support extend",
    ]
    assert len(parsed.items) == 1


def _flat(nodes):
    for node in nodes:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            yield from _flat(node.elts)
        else:
            yield node


def mode_matches(source: str, relative: str) -> list[str]:
    """Where a module names a mode (``Mode.X``) or compares a ``mode`` with a mode's name."""
    names = {mode.value for mode in Mode}
    found = []
    for node in ast.walk(ast.parse(source, filename=relative)):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Mode"
                and node.attr in Mode.__members__ and (relative, node.attr) not in ALLOWED_MEMBER_USES):
            found.append(f"{relative}:{node.lineno} Mode.{node.attr}")
        elif isinstance(node, ast.Compare):
            operands = list(_flat([node.left, *node.comparators]))
            if (any(isinstance(o, ast.Constant) and o.value in names for o in operands)
                    and any("mode" in ast.unparse(o).lower() for o in operands if not isinstance(o, ast.Constant))):
                found.append(f"{relative}:{node.lineno} {ast.unparse(node)}")
    return found


def test_modes_are_told_apart_only_in_the_registry():
    offending = [
        match for path in sorted((ROOT / "serving").rglob("*.py")) if MODES_PACKAGE not in path.parents
        for match in mode_matches(path.read_text(), path.relative_to(ROOT).as_posix())
    ]
    assert offending == [], "ask tessera.serving.jobs.modes.rules_for(mode) instead of comparing modes"


def test_the_mode_check_finds_what_it_looks_for():
    source = 'if spec.mode == Mode.LOOP or job.mode in ("image", "edit") or name == "loop":\n    pass\n'
    assert sorted(mode_matches(source, "serving/x.py")) == [
        "serving/x.py:1 Mode.LOOP", "serving/x.py:1 job.mode in ('image', 'edit')",
    ]
    assert mode_matches("mode: Mode = Field(Mode.TEXT_TO_VIDEO)\n", "serving/jobs/spec.py") == []
