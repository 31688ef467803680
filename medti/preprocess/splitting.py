"""Subject-wise, class-stratified train/val/test splits and the embedding-training subset.

All images of a subject land in one split. Subjects are stratified by their class (the class of most of
their images; on a tie the later class in the modality's order, i.e. the disease). ``prepare.split`` gives
either fractions of each class's subjects (floats, summing to at most 1) or subject counts per class
(integers); subjects beyond the counts are left out and listed as such. Everything is a function of the
seed and a salt-free order of the subjects (``order``: prepare uses the least checksum of each subject's
source files), so a rerun, and a clone with another salt, gives the same splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from medti.config import split_counts
from medti.errors import ConfigError
from medti.manifest import SPLITS


def split_mode(split: dict) -> str:
    """'fractions' or 'counts' for a ``prepare.split`` setting; ConfigError when it mixes the two."""
    values = {k: split[k] for k in SPLITS}
    nonzero = [v for v in values.values() if v]
    if all(isinstance(v, int) and not isinstance(v, bool) for v in nonzero):
        return "counts"
    if all(isinstance(v, float) and v <= 1 for v in nonzero):
        if sum(values.values()) > 1 + 1e-9:
            raise ConfigError(f"prepare.split: the fractions add up to {sum(values.values()):g}, more than 1")
        return "fractions"
    raise ConfigError("prepare.split: give fractions (0.5, 0.25, ...) or whole subject counts per class "
                      "(100, 50, ...), not a mix")


def subject_class(classes_of_images: list[str], order: list[str]) -> str:
    counts = Counter(classes_of_images)
    return max(counts, key=lambda c: (counts[c], order.index(c)))


def _counts(n: int, split: dict, mode: str, cls: str, modality: str) -> dict[str, int]:
    wanted = [s for s in SPLITS if split[s]]
    if mode == "counts":
        need = {s: int(split[s]) for s in SPLITS}
        if n < sum(need.values()):
            raise ConfigError(f"{modality}: class '{cls}' has {n} subjects, but prepare.split asks for "
                              f"{' + '.join(str(need[s]) for s in SPLITS)} = {sum(need.values())} per class")
        return need
    if n < len(wanted):
        raise ConfigError(f"{modality}: class '{cls}' has {n} subject{'s' if n != 1 else ''}, too few for a "
                          f"subject-wise split into {', '.join(wanted)} (needs at least {len(wanted)})")
    return split_counts(n, split)  # the one rounding rule, shared with params validation


def assign_splits(subject_classes: dict[str, str], classes: list[str], split: dict, seed: int,
                  modality: str = "data", order: dict[str, str] | None = None) -> dict[str, str | None]:
    """Subject id -> 'train' | 'val' | 'test' | None (left out by subject counts). ``order``: a salt-free key
    per subject id that fixes the order the seed permutes (default: the ids themselves)."""
    mode = split_mode(split)
    keys = dict(order or {})
    by_class: dict[str, list[str]] = defaultdict(list)
    for subject, cls in subject_classes.items():
        by_class[cls].append(subject)
    out: dict[str, str | None] = {}
    for index, cls in enumerate(classes):
        subjects = sorted(by_class.get(cls, []), key=lambda s: (keys.get(s, s), s))
        if not subjects:
            raise ConfigError(f"{modality}: class '{cls}' has no images, so it cannot be split")
        order = np.random.default_rng([seed, index]).permutation(len(subjects))
        counts = _counts(len(subjects), split, mode, cls, modality)
        cursor = 0
        for s in SPLITS:
            for i in order[cursor:cursor + counts[s]]:
                out[subjects[i]] = s
            cursor += counts[s]
        for i in order[cursor:]:
            out[subjects[i]] = None
    return out


def pick_subset(images: list[tuple[str, str]], n: int, seed: int, order: dict[str, str] | None = None) -> list[str]:
    """``n`` image ids from (subject id, image id) pairs, spread over as many subjects as possible: subjects
    in a seeded order (of ``order``'s salt-free keys where given), taking one image from each in turn."""
    per_subject: dict[str, list[str]] = defaultdict(list)
    for subject, image in images:
        per_subject[subject].append(image)
    rng = np.random.default_rng(seed)
    subjects = sorted(per_subject, key=lambda s: ((order or {}).get(s, s), s))
    subjects = [subjects[i] for i in rng.permutation(len(subjects))]
    queues = [[ids[i] for i in rng.permutation(len(ids))] for ids in (sorted(per_subject[s]) for s in subjects)]
    picked: list[str] = []
    depth = 0
    while len(picked) < n and any(len(q) > depth for q in queues):
        picked.extend(q[depth] for q in queues if len(q) > depth)
        depth += 1
    return picked[:n]
