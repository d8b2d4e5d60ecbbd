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


# The 80 prompt templates of OpenAI's CLIP zero-shot ImageNet evaluation (its notebook
# "Prompt_Engineering_for_ImageNet"; OpenCLIP's zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES),
# in their order.
OPENAI_IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

# --templates NAME: a named set instead of a file
NAMED_TEMPLATES = {"default": DEFAULT_TEMPLATES, "openai_imagenet": OPENAI_IMAGENET_TEMPLATES}


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


def read_templates(spec: str | None) -> list[str] | None:
    """A named set (openai_imagenet, default), a file of one template a line, or a
    comma-separated list."""
    if spec in NAMED_TEMPLATES and not os.path.isfile(spec):
        return list(NAMED_TEMPLATES[spec])
    return read_list(spec)


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
