"""Zero-shot prompts: class names, several per class ("seven|7"), and prompt templates
("a photo of a {}."), read from files or lists, or templates learnt from training captions.

A class's classifier column is the mean of the normalized embeddings of every template filled
with every name of the class (CLIP's prompt ensemble, widened to the names).

    classnames = read_classnames("names.txt")    # lines "seven|7" -> [["seven", "7"], ...]
    classnames = read_classnames("zero|0,one|1") # the same inline: classes by ",", names by "|"
    templates = templates_from_captions(shard_captions(["shards/*.tar"]), classnames)
    prompts = Prompts(classnames, templates)
    prompts.texts(7)  # ["a photo of a seven.", "a photo of a 7.", ...]
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trainer.configs import UserError

# The default ensemble: the bare name (the commonest web caption of a thing is its name) and
# a few generic phrasings, none of them tied to photographs of objects only.
DEFAULT_TEMPLATES = (
    "{}",
    "a photo of a {}.",
    "a picture of the {}.",
    "an image of a {}.",
    "the {}.",
    "a drawing of a {}.",
)


@dataclass(frozen=True)
class Prompts:
    classnames: list[list[str]]  # per class, its names; the first one labels the class
    templates: list[str]  # each with one "{}" where a name goes
    source: str = "default"  # where the templates came from (a file, shards, the run's captions)

    def __post_init__(self):
        if any("{}" not in t for t in self.templates):
            raise UserError("every template needs a {} where the class name goes")
        if not self.templates:
            raise UserError("no prompt template")

    def texts(self, label: int) -> list[str]:
        """Every prompt of class `label`: each template with each of its names."""
        return [t.format(name) for name in self.classnames[label] for t in self.templates]

    def labels(self) -> list[str]:
        return [names[0] for names in self.classnames]

    def to_dict(self) -> dict:
        return {
            "classnames": self.classnames,
            "templates": list(self.templates),
            "templates_from": self.source,
        }


def read_list(spec: str | None) -> list[str] | None:
    """Lines of a file, or a comma-separated list."""
    if spec is None:
        return None
    if os.path.isfile(spec):
        return [line.strip() for line in Path(spec).read_text().splitlines() if line.strip()]
    return [item.strip() for item in spec.split(",") if item.strip()]


def read_classnames(spec: str | None) -> list[list[str]] | None:
    """One class a line of a file (or a comma-separated list), its names separated by "|"."""
    items = read_list(spec)
    if items is None:
        return None
    classes = [[name.strip() for name in item.split("|") if name.strip()] for item in items]
    if any(not names for names in classes):
        raise UserError(f"a class in {spec!r} has no name")
    return classes


def templates_from_captions(
    captions: Iterable[str],
    classnames: list[list[str]],
    limit: int = 12,
    min_share: float = 0.5,
) -> list[str]:
    """The commonest ways the captions name a class, as templates: every caption holding one
    class name as a whole word (case-insensitive) gives the caption with "{}" in its place;
    kept are those seen with at least `min_share` of the classes (a phrasing, not a class's
    own context), the `limit` commonest. Empty if no caption names a class."""
    names = sorted({n.lower() for ns in classnames for n in ns}, key=len, reverse=True)
    class_of = {n.lower(): c for c, ns in enumerate(classnames) for n in ns}
    pattern = re.compile(r"(?<!\w)(" + "|".join(map(re.escape, names)) + r")(?!\w)")
    counts: Counter[str] = Counter()
    seen_with: dict[str, set[int]] = {}
    for caption in captions:
        text = " ".join(caption.lower().split())
        found = pattern.findall(text)
        if len(found) != 1 or "{" in text or "}" in text:
            continue  # no class, or several: which one would the template stand for?
        template = pattern.sub("{}", text)
        counts[template] += 1
        seen_with.setdefault(template, set()).add(class_of[found[0]])
    needed = max(1, round(min_share * len(classnames)))
    common = [t for t, _ in counts.most_common() if len(seen_with[t]) >= needed]
    return common[:limit]
