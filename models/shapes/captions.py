"""Captions of the shapes world: varied short phrasings, the detailed caption style, parsing.

Two styles are trained together, so the model follows a prompt with expansion on or off:

* *short* prompts, the way people type them ("red ball going left, fast"), with synonyms and
  varied word order; size, speed and background are often left out;
* the *detailed caption* style that :func:`expand` writes deterministically from a short
  prompt (DALL-E 3 style re-captioning, rule based): every attribute the prompt names, in a
  fixed template, plus the facts of the world.

:func:`parse_prompt` reads attributes back from either style; the evaluator uses it to know
what a generated clip should show.
"""

from __future__ import annotations

import re

import numpy as np

from tessera.models.shapes.world import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES, SPEEDS

# Synonyms a prompt may use, mapped to the world's canonical values. The first entry of each
# list is the canonical word used by the detailed style.
COLOUR_WORDS: dict[str, list[str]] = {
    "red": ["red", "crimson", "scarlet"],
    "green": ["green", "lime", "emerald"],
    "blue": ["blue", "azure", "cobalt"],
    "yellow": ["yellow", "golden", "lemon"],
    "magenta": ["magenta", "purple", "pink", "violet"],
    "cyan": ["cyan", "turquoise", "aqua", "teal"],
}
SHAPE_WORDS: dict[str, list[str]] = {
    "circle": ["circle", "ball", "disc", "dot", "disk", "sphere"],
    "square": ["square", "box", "block", "tile", "cube"],
}
SIZE_WORDS: dict[str, list[str]] = {
    "small": ["small", "little", "tiny"],
    "medium": ["medium-sized", "medium", "mid-sized"],
    "large": ["large", "big", "huge"],
}
SPEED_WORDS: dict[str, list[str]] = {
    "slow": ["slowly", "slow", "gently", "leisurely"],
    "medium": ["steadily", "steady", "moderately"],
    "fast": ["quickly", "fast", "rapidly", "swiftly", "quick"],
}
BACKGROUND_WORDS: dict[str, list[str]] = {
    "black": ["black"],
    "grey": ["grey", "gray"],
    "white": ["white"],
}
MOTION_WORDS: dict[str, list[str]] = {
    "left": ["left", "leftward", "leftwards", "westward"],
    "right": ["right", "rightward", "rightwards", "eastward"],
    "up": ["up", "upward", "upwards", "rising", "rises", "rise", "ascending", "climbing"],
    "down": ["down", "downward", "downwards", "falling", "falls", "fall", "sinking", "sinks", "descending", "dropping"],
    "bounce": ["bouncing", "bounce", "bounces", "bounced", "ricocheting", "ricochets"],
}

# Words that carry no attribute, so a prompt made only of them has nothing "unknown" to keep.
FILLER_WORDS = frozenset(
    "a an the of on in over across against with to towards toward and that which is it its moving moves move "
    "going goes go heading heads sliding slides slide drifting drifts drift travelling traveling travels "
    "gliding glides rolling rolls shape object thing video clip frame screen background backdrop plain "
    "around side edge edges walls wall off top bottom at pace speed colored coloured shot camera static "
    # the detailed template's own words, so expanding an expanded caption adds nothing
    "when leaves comes back from opposite keeps size colour color throughout reflecting additional details".split()
)

_DETAILED_DIRECTION = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}
_DETAILED_SPEED = {"slow": "slowly", "medium": "steadily", "fast": "quickly"}
_SHORT_DIRECTION = {
    "left": ["left", "to the left", "leftward", "towards the left"],
    "right": ["right", "to the right", "rightward", "towards the right"],
    "up": ["up", "upward", "upwards", "towards the top"],
    "down": ["down", "downward", "downwards", "towards the bottom"],
}
_VERBS = ["moving", "moves", "going", "sliding", "drifting", "travelling", "heading", "gliding"]
_SPECIAL_VERBS = {
    "up": ["rising", "floating up", "rises", "climbing up"],
    "down": ["falling", "sinking", "drops down", "falling down"],
}
_BOUNCE_PHRASES = ["bouncing", "bouncing around", "bounces off the walls", "bouncing off the edges", "ricocheting around"]
_BACKGROUND_PHRASES = ["on a {bg} background", "against a {bg} backdrop", "on {bg}", "over a plain {bg} background"]

Attributes = dict[str, str]
"""Keys among colour, shape, size, speed, motion, background; values canonical."""


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def short_caption(attributes: Attributes, rng: np.random.Generator) -> str:
    """A short prompt naming exactly the given attributes, phrased at random."""
    words: list[str] = []
    if "size" in attributes:
        words.append(_pick(rng, SIZE_WORDS[attributes["size"]]))
    if "colour" in attributes:
        words.append(_pick(rng, COLOUR_WORDS[attributes["colour"]]))
    words.append(_pick(rng, SHAPE_WORDS[attributes["shape"]]) if "shape" in attributes else _pick(rng, ["shape", "object"]))
    subject = " ".join(words)
    if rng.random() < 0.6:
        subject = ("an " if subject[0] in "aeiou" else "a ") + subject

    motion = attributes.get("motion")
    speed = _pick(rng, SPEED_WORDS[attributes["speed"]]) if "speed" in attributes else None
    if motion is None:
        action = _pick(rng, _VERBS) if rng.random() < 0.5 else ""
    elif motion == "bounce":
        action = _pick(rng, _BOUNCE_PHRASES)
    elif motion in _SPECIAL_VERBS and rng.random() < 0.3:
        action = _pick(rng, _SPECIAL_VERBS[motion])
    else:
        action = f"{_pick(rng, _VERBS)} {_pick(rng, _SHORT_DIRECTION[motion])}"
    if speed and action:
        action = f"{speed} {action}" if rng.random() < 0.5 else f"{action} {speed}"
    elif speed:
        action = speed

    parts = [subject]
    if action:
        joiner = _pick(rng, [" ", ", ", " that is "]) if motion is not None else " "
        parts.append(joiner + action)
    if "background" in attributes:
        parts.append(" " + _pick(rng, _BACKGROUND_PHRASES).format(bg=_pick(rng, BACKGROUND_WORDS[attributes["background"]])))
    caption = "".join(parts).strip()
    if rng.random() < 0.3:
        caption = caption[0].upper() + caption[1:]
    if rng.random() < 0.2:
        caption += "."
    return caption


def detailed_caption(attributes: Attributes) -> str:
    """The detailed caption style the model is trained on; attributes not given are not invented."""
    subject = " ".join(
        [attributes[key] for key in ("size", "colour") if key in attributes]
        + [attributes.get("shape", "shape")]
    )
    article = "An" if subject[0] in "aeiou" else "A"
    noun = attributes.get("shape", "shape")
    background = f"a plain {attributes['background']} background" if "background" in attributes else "a plain background"
    speed = _DETAILED_SPEED.get(attributes.get("speed", ""), "")
    motion = attributes.get("motion")
    if motion == "bounce":
        verb = " ".join(w for w in ["bounces", speed, "around"] if w)
        body = (
            f"{article} {subject} {verb} {background}, reflecting off the edges of the frame. "
            f"The camera is static. The {noun} keeps its size and colour throughout the clip."
        )
    elif motion in _DETAILED_DIRECTION:
        verb = " ".join(w for w in ["moves", speed, _DETAILED_DIRECTION[motion]] if w)
        body = (
            f"{article} {subject} {verb} across {background}. When it leaves the frame it comes back "
            f"from the opposite edge. The camera is static. The {noun} keeps its size and colour throughout the clip."
        )
    else:
        verb = " ".join(w for w in ["moves", speed] if w)
        body = (
            f"{article} {subject} {verb} across {background}. "
            f"The camera is static. The {noun} keeps its size and colour throughout the clip."
        )
    return body


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)?")


def _lookup(table: dict[str, list[str]]) -> dict[str, str]:
    return {word: value for value, words in table.items() for word in words}


_TABLES = {
    "colour": _lookup(COLOUR_WORDS),
    "shape": _lookup(SHAPE_WORDS),
    "size": _lookup(SIZE_WORDS),
    "speed": _lookup(SPEED_WORDS),
    "background": _lookup(BACKGROUND_WORDS),
    "motion": _lookup(MOTION_WORDS),
}
_KNOWN_WORDS = frozenset().union(*(table.keys() for table in _TABLES.values())) | FILLER_WORDS


def parse_prompt(prompt: str) -> Attributes:
    """Attributes named by a prompt (first mention wins); works on short and detailed captions."""
    words = _WORD.findall(prompt.lower())
    found: Attributes = {}
    for index, word in enumerate(words):
        for key, table in _TABLES.items():
            if word in table and key not in found:
                # "the bottom"/"the top" describe a direction only after towards/to.
                found[key] = table[word]
                break
        if word in ("top", "bottom") and "motion" not in found and index > 0 and words[index - 1] in ("towards", "toward", "the"):
            found["motion"] = "up" if word == "top" else "down"
    return found


def unknown_words(prompt: str) -> list[str]:
    """Words of a prompt that name nothing in the shapes world (kept verbatim by :func:`expand`)."""
    return [word for word in _WORD.findall(prompt.lower()) if word not in _KNOWN_WORDS]


IDENTITY_KEYS = ("colour", "shape", "size")
"""Attributes that make up what a subject *is*; a shared character description fixes them for every shot."""


def with_character(shot: Attributes, character: Attributes) -> Attributes:
    """A shot's attributes with a shared character's identity imposed.

    The character wins on identity (colour, shape, size) so every shot shows the same subject;
    the shot wins on what happens (motion, speed, background), and the character only fills gaps.
    """
    merged = {**character, **shot}
    merged.update({key: character[key] for key in IDENTITY_KEYS if key in character})
    return merged


def expand(prompt: str, character: str = "") -> str:
    """Deterministic re-captioning of a short prompt into the detailed style.

    A prompt that is already detailed (parses to the same caption) comes back unchanged;
    words the shapes world does not know are kept after the template.

    ``character`` is a description shared by every shot of a multi-shot video: its identity
    attributes override the shot's (:func:`with_character`), and words of it the world does not
    know are carried verbatim as ``Character: ...``, identical in every shot's caption.
    """
    prompt = prompt.strip()
    character = character.strip()
    if character:
        caption = detailed_caption(with_character(parse_prompt(prompt), parse_prompt(character)))
        if unknown_words(character):
            caption += f" Character: {character.rstrip('.')}."
    else:
        caption = detailed_caption(parse_prompt(prompt))
    if prompt == caption:
        return caption
    extra = unknown_words(prompt)
    if extra:
        caption += f" Additional details: {prompt.rstrip('.')}."
    return caption


def random_attributes(spec_attributes: Attributes, rng: np.random.Generator) -> Attributes:
    """The subset of a clip's attributes a training prompt mentions (colour and motion nearly always)."""
    keep_probability = {"colour": 0.97, "motion": 0.97, "shape": 0.85, "size": 0.4, "speed": 0.45, "background": 0.35}
    return {key: value for key, value in spec_attributes.items() if rng.random() < keep_probability[key]}


def training_captions(spec_attributes: Attributes, rng: np.random.Generator, count: int = 5) -> list[str]:
    """A varied set of captions for one clip: short, expanded short, and full detailed."""
    captions: list[str] = []
    kinds = ["short", "expanded", "short", "detailed", "expanded", "short"]
    for index in range(count):
        kind = kinds[index % len(kinds)]
        if kind == "detailed":
            captions.append(detailed_caption(spec_attributes))
            continue
        subset = random_attributes(spec_attributes, rng)
        short = short_caption(subset, rng)
        captions.append(short if kind == "short" else expand(short))
    return captions


def all_attribute_tuples() -> list[Attributes]:
    """Every full attribute combination of the world (held-out ones included)."""
    return [
        {"colour": c, "shape": s, "size": z, "speed": v, "motion": m, "background": b}
        for c in COLOURS
        for s in SHAPES
        for z in SIZES
        for v in SPEEDS
        for m in MOTIONS
        for b in BACKGROUNDS
    ]
