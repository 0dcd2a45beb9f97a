"""Captions of Fashion-MNIST scenes: weak ones name some, not all, of a scene's classes.

A caption names only classes present in its scene. A weak caption (:func:`weak_caption`, the
default) names at least one and leaves at least one out when a scene holds two or more distinct
classes (a scene of one class names it); a complete caption (:func:`complete_caption`) names
every class. A named class is named with its true count when a count is given ("two
sneakers"), in varied wording, and :func:`classes_in_caption` reads the classes back from the text.
"""

from __future__ import annotations

import random
import re
from typing import Dict, List, Sequence, Tuple

# Per class: (singular, plural) names. Each word names one class only, and no name holds
# another class's name as a whole word, so a caption's classes can be read back from its text.
CLASS_NAMES: Dict[int, List[Tuple[str, str]]] = {
    0: [("t-shirt", "t-shirts"), ("tee", "tees"), ("top", "tops")],
    1: [("pair of trousers", "pairs of trousers"), ("pair of pants", "pairs of pants"),
        ("pair of jeans", "pairs of jeans")],
    2: [("pullover", "pullovers"), ("sweater", "sweaters"), ("jumper", "jumpers")],
    3: [("dress", "dresses"), ("gown", "gowns"), ("frock", "frocks")],
    4: [("coat", "coats"), ("jacket", "jackets"), ("overcoat", "overcoats")],
    5: [("sandal", "sandals"), ("flip-flop", "flip-flops")],
    6: [("shirt", "shirts"), ("blouse", "blouses"), ("button-up shirt", "button-up shirts")],
    7: [("sneaker", "sneakers"), ("trainer", "trainers"), ("running shoe", "running shoes")],
    8: [("bag", "bags"), ("handbag", "handbags"), ("purse", "purses")],
    9: [("ankle boot", "ankle boots"), ("boot", "boots")],
}
_COUNT_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight"}
# {items}: the named phrases joined ("a coat, two bags and a dress"). {first}/{rest}: the first
# phrase without its article and the others joined; used only when two or more are named.
_TEMPLATES = (
    "a photo with {items}",
    "a picture of {items}",
    "{items}",
    "{items} on a dark background",
    "you can see {items} here",
    "a cluttered shot showing {items}",
    "some clothes, among them {items}",
    "a grainy photo containing {items}",
    "{items}, and other stuff",
    "a flat lay of {items}",
    "spotted: {items}",
    "there is {items} in this one",
)
_PAIR_TEMPLATES = ("someone's {first} next to {rest}", "{first} lying beside {rest}")


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _join(phrases: Sequence[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _class_counts(labels: Sequence[int]) -> Dict[int, int]:
    counts: Dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    return counts


def _caption_naming(chosen: Sequence[int], counts: Dict[int, int], rng: random.Random) -> Tuple[str, List[int]]:
    """A caption naming the classes ``chosen`` in that order, each with its wording drawn from ``rng``."""
    bare, full = [], []
    for label in chosen:
        singular, plural = rng.choice(CLASS_NAMES[label])
        count = counts[label]
        if count == 1:
            bare.append(singular)
            full.append(_with_article(singular))
        else:
            phrase = f"{_COUNT_WORDS.get(count, str(count))} {plural}" if rng.random() < 0.5 else plural
            bare.append(phrase)
            full.append(phrase)
    if len(chosen) >= 2 and rng.random() < 0.25:
        text = rng.choice(_PAIR_TEMPLATES).format(first=bare[0], rest=_join(full[1:]))
    else:
        text = rng.choice(_TEMPLATES).format(items=_join(full))
    return text, sorted(chosen)


def weak_caption(labels: Sequence[int], rng: random.Random) -> Tuple[str, List[int]]:
    """A caption naming some classes of a scene whose items have ``labels``, and those classes.

    With two or more distinct classes, between 1 and (distinct - 1) of them are named; with one
    class, it is named. A named class appears with its true count ("two sneakers"), as a plain
    plural ("sneakers") when it occurs more than once, or with an article ("a sneaker").
    Returns (caption, sorted class ids named).
    """
    counts = _class_counts(labels)
    classes = list(counts)
    chosen = classes if len(classes) == 1 else rng.sample(classes, rng.randint(1, len(classes) - 1))
    return _caption_naming(chosen, counts, rng)


def complete_caption(labels: Sequence[int], rng: random.Random) -> Tuple[str, List[int]]:
    """A caption naming every class of a scene whose items have ``labels`` (in a random order,
    worded as :func:`weak_caption` words them), and those classes."""
    counts = _class_counts(labels)
    chosen = list(counts)
    rng.shuffle(chosen)
    return _caption_naming(chosen, counts, rng)


# Caption kinds of the scene generator (``scenes.captions``).
CAPTION_KINDS = {"weak": weak_caption, "complete": complete_caption}


def classes_in_caption(caption: str) -> List[int]:
    """The class ids whose names occur in ``caption`` as whole words (the inverse of
    :func:`weak_caption` for its own vocabulary)."""
    found = set()
    for label, names in CLASS_NAMES.items():
        for singular, plural in names:
            for name in (singular, plural):
                if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", caption):
                    found.add(label)
    return sorted(found)


__all__ = ["CAPTION_KINDS", "CLASS_NAMES", "classes_in_caption", "complete_caption", "weak_caption"]
