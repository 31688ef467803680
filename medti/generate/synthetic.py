"""Synthetic training sets: N images per class, resumable, shardable, with a manifest like the real one.

Layout of an output folder::

    OUT/<class>/<class>-00000.png   the images (each written atomically as soon as its batch is decoded)
    OUT/manifest.csv                one row per image (medti.manifest.SYNTHETIC_COLUMNS), written last
    OUT/grid.png                    a sample grid, one row per class
    OUT/generate.json               the settings, their fingerprint and the run's figures
    OUT/shards/manifest-K-of-N.csv  a shard's rows (``--shard K/N``), joined by :func:`merge_shards`

Image i of class c always gets the seed :func:`derive_seed` (base seed, c, i), so any image can be drawn
again alone, a killed run resumes by skipping the images already drawn, and shards (any N) together make
exactly the set one unsharded run makes. Settings that change what an image is (model, embeddings,
prompts, steps, guidance, sampler and its timesteps, resolution, seed...) are fingerprinted: images made
with other settings are never mixed into a set; they are discarded (with a warning naming the settings that
differ) when a run with new settings starts.

An unsharded run draws into a staging folder beside OUT, ``<parent>/.medti-partial/<name>/`` (with its own
``generate.json``), and puts the finished set in OUT's place at the end. OUT is what a workflow manager
declares: Snakemake deletes an incomplete output (``--rerun-incomplete``) or a failed job's, and the staged
images survive that, so the rerun draws only the missing ones. A finished OUT made with the same settings
is taken over (hard links), so a larger ``n_per_class`` draws only the new images. One run at a time per OUT
(:func:`medti.atomic.output_lock`); shards of one set share it and each locks its own part.

In manifest rows, ``source_checksum`` is the sha256 of the PNG itself (a synthetic image is its own
source; the embedding that made it is ``embedding_checksum``), ``subject_id`` is ``syn-<class>-<index>``,
``split`` is ``train`` and ``synthetic`` is true, so classifiers can mix real and synthetic rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medti.atomic import open_staging, staging_dir, tidy_staging
from medti.errors import ConfigError, InputError
from medti.hashing import json_digest, sha256_hex

if TYPE_CHECKING:
    import torch

    from medti.generate.sampling import Sampler
    from medti.models.loading import BaseModel

log = logging.getLogger(__name__)

SETTINGS_FILE = "generate.json"
MANIFEST = "manifest.csv"
GRID = "grid.png"
SHARDS = "shards"
GRID_PER_CLASS = 8
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def derive_seed(base_seed: int, class_name: str, index: int) -> int:
    """The seed of image ``index`` of ``class_name``: stable across runs, machines and shardings."""
    digest = sha256_hex(f"medti-generate/{int(base_seed)}/{class_name}/{int(index)}")
    return int(digest[:16], 16) & (2**63 - 1)


def parse_shard(value: str | None) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); None -> (1, 1)."""
    if value in (None, ""):
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard '{value}': expected K/N with 1 <= K <= N (e.g. 2/4)")
    return int(m.group(1)), int(m.group(2))


@dataclass
class ClassSpec:
    """One class of a set: its prompts (cycled over the images) and the embeddings they use."""

    name: str
    label: int
    prompts: list[str]
    embedding_checksum: str = ""

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"class name '{self.name}': use letters, digits, '_', '-' or '.' only")
        if not self.prompts:
            raise ConfigError(f"class '{self.name}': no prompt")


@dataclass
class SetSpec:
    """Everything an image of the set depends on (and what its manifest rows record)."""

    modality: str
    classes: list[ClassSpec]
    n_per_class: int
    base_model: str
    text_encoder_hash: str
    seed: int = 0
    steps: int = 20
    guidance: float = 5.0
    scheduler: str = "dpmsolver++"
    negative_prompt: str = ""
    resolution: int | None = None
    channels: str = "rgb"  # rgb | grey (match the real images the classifier will see)
    shard: tuple[int, int] = (1, 1)
    sampler: dict | None = None  # the sampler's class, config and timesteps (filled in by generate_set)
    variant: str | None = None  # the embedding variant (pipeline mode); its embeddings' checksums are in classes

    def __post_init__(self) -> None:
        if int(self.n_per_class) < 1:
            raise ConfigError(f"n_per_class is {self.n_per_class}: the count of images per class must be at least 1")
        if not self.classes:
            raise ConfigError("no classes to generate")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ConfigError(f"class names must be distinct: {names}")
        if self.channels not in ("rgb", "grey"):
            raise ConfigError(f"channels '{self.channels}': expected rgb or grey")

    def fingerprint(self) -> str:
        """A hash of what changes the images (not the count, the shard or the batch size)."""
        d = asdict(self)
        for key in ("n_per_class", "shard", "variant"):
            d.pop(key)
        return json_digest(d, 16)

    def items(self) -> list[Item]:
        """All images of the set, class by class; this shard's are every N-th, from the K-th."""
        every = [Item(c, i, derive_seed(self.seed, c.name, i), c.prompts[i % len(c.prompts)])
                 for c in self.classes for i in range(int(self.n_per_class))]
        k, n = self.shard
        return every[k - 1::n]


@dataclass
class Item:
    cls: ClassSpec
    index: int
    seed: int
    prompt: str

    @property
    def path(self) -> str:
        return f"{self.cls.name}/{self.cls.name}-{self.index:05d}.png"


@dataclass
class SetResult:
    out: Path
    manifest: Path | None
    generated: int
    skipped: int
    seconds: float
    stats: dict = field(default_factory=dict)


def generate_set(model: BaseModel, spec: SetSpec, out: str | os.PathLike, *, batch_size: int = 16,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                 sampler: Sampler | None = None) -> SetResult:
    """Draw the set (or this shard of it) into ``out``, skipping images already drawn; write the manifest."""
    from medti.atomic import output_lock
    from medti.generate.sampling import Sampler
    from medti.generate.schedulers import describe_sampler

    out = Path(out)
    items = spec.items()
    sampler = sampler or Sampler(model, device=device, dtype=dtype)
    sampler.validate(sorted({it.prompt for it in items}), spec.negative_prompt, spec.scheduler, spec.resolution)
    spec.sampler = describe_sampler(spec.scheduler, model.noise_scheduler.config, spec.steps)
    k, n = spec.shard
    if n == 1:
        with output_lock(out, what="generating this synthetic set"):
            return _generate_staged(sampler, spec, out, items, batch_size)
    with output_lock(out, shared=True, what="writing this synthetic set (not as a shard)"), \
            output_lock(out.parent / f"{out.name}.shard-{k}-of-{n}", what=f"generating shard {k}/{n} of this set"):
        out.mkdir(parents=True, exist_ok=True)
        with output_lock(out.parent / f"{out.name}.settings", wait=60, what="checking this set's settings"):
            _start_or_resume(out, spec)
        return _generate_shard(sampler, spec, out, items, batch_size)


def _draw(sampler: Sampler, spec: SetSpec, folder: Path, todo: list[Item], batch_size: int) -> float:
    """Draw ``todo`` into ``folder``, each batch saved as soon as it is decoded; return the seconds it took."""
    start = time.perf_counter()
    if todo:
        def save(sl, images):
            for it, img in zip(todo[sl], images):
                save_png(img, folder / it.path, spec.channels)

        sampler.sample([it.prompt for it in todo], [it.seed for it in todo], negative_prompt=spec.negative_prompt,
                       steps=spec.steps, guidance=spec.guidance, scheduler=spec.scheduler,
                       resolution=spec.resolution, batch_size=batch_size,
                       progress_desc=f"generate {spec.modality}", on_batch=save)
    return time.perf_counter() - start


def _stats(items: list[Item], todo: list[Item], seconds: float) -> dict:
    return {"images": len(items), "generated": len(todo), "skipped": len(items) - len(todo),
            "seconds": round(seconds, 3),
            "images_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}


def _generate_staged(sampler: Sampler, spec: SetSpec, out: Path, items: list[Item], batch_size: int) -> SetResult:
    """An unsharded run (``out`` locked): resume in the staging folder, then move the finished set into place."""
    from medti.atomic import replace_dir, sweep_stale_temporaries, write_json

    stage = staging_dir(out)
    sweep_stale_temporaries(out.parent, name=out.name)  # a replaced set a killed run left behind
    finished = _check_output(out, spec)
    _open_stage(stage, spec)
    adopted = _adopt(out, stage, items) if finished == spec.fingerprint() else 0
    for c in spec.classes:
        sweep_stale_temporaries(stage / c.name)
    todo = [it for it in items if not (stage / it.path).is_file()]
    skipped = len(items) - len(todo)
    if skipped:
        log.info("resuming: %d of %d images are already drawn (%d staged in %s, %d taken over from %s)",
                 skipped, len(items), skipped - adopted, stage, adopted, out)
    seconds = _draw(sampler, spec, stage, todo, batch_size)
    stats = _stats(items, todo, seconds)
    _drop_extra(stage, spec, items)
    rows = manifest_rows(stage, spec, items)
    shutil.rmtree(stage / SHARDS, ignore_errors=True)
    _write_set(stage, rows, [c.name for c in spec.classes])
    write_json(stage / SETTINGS_FILE, _settings_record(spec, stats))
    replace_dir(stage, out)
    tidy_staging(stage.parent)
    return SetResult(out, out / MANIFEST, len(todo), skipped, seconds, stats)


def _generate_shard(sampler: Sampler, spec: SetSpec, out: Path, items: list[Item], batch_size: int) -> SetResult:
    """Shard K of N (``out`` shared, the shard locked): draw into ``out`` itself, write the shard's manifest."""
    from medti.atomic import sweep_stale_temporaries, write_json

    k, n = spec.shard
    for c in spec.classes:
        sweep_stale_temporaries(out / c.name)
    todo = [it for it in items if not (out / it.path).is_file()]
    skipped = len(items) - len(todo)
    if skipped:
        log.info("resuming: %d of %d images are already in %s", skipped, len(items), out)
    seconds = _draw(sampler, spec, out, todo, batch_size)
    stats = _stats(items, todo, seconds)
    rows = manifest_rows(out, spec, items)
    manifest = out / SHARDS / f"manifest-{k}-of-{n}.csv"
    _write_rows(rows, manifest)
    write_json(out / SHARDS / f"shard-{k}-of-{n}.json", {"fingerprint": spec.fingerprint(), "shard": [k, n],
                                                           "images": len(items), "stats": stats})
    return SetResult(out, manifest, len(todo), skipped, seconds, stats)


_IMAGE = re.compile(r"^(?P<cls>[A-Za-z0-9_.-]+)-(?P<index>\d{5,})\.png$")


def _check_output(out: Path, spec: SetSpec) -> str | None:
    """The fingerprint of the finished set in ``out`` (None: no set there). ``out`` is replaced by the new set
    at the end, so it may hold nothing but a medti synthetic set (InputError otherwise)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose a folder for the synthetic set")
    record = _read_json(out / SETTINGS_FILE)
    classes = {c.name for c in spec.classes} | {c.get("name") for c in (record or {}).get("classes", [])
                                                if isinstance(c, dict)}
    if record is None:
        stray = sorted(c.name for c in spec.classes if any((out / c.name).glob(f"{c.name}-*.png")))
        if stray:
            raise InputError(f"{out}: holds images of classes {stray} but no {SETTINGS_FILE} "
                             "(not a medti synthetic set): choose an empty folder")
    ours = {SETTINGS_FILE, MANIFEST, GRID, SHARDS, ".snakemake_timestamp"}
    foreign = []
    for entry in sorted(out.iterdir()):
        if entry.name in classes and entry.is_dir():
            foreign += [f"{entry.name}/{p.name}" for p in sorted(entry.iterdir())
                        if not (p.name.startswith(".") or (_IMAGE.match(p.name) and p.name.startswith(entry.name)))]
        elif entry.name not in ours:
            foreign.append(entry.name)
    if foreign:
        raise InputError(f"{out}: holds {foreign[0]}, which is not part of a medti synthetic set; the set replaces "
                         "the folder when it is complete, so choose an empty or new folder")
    if record is None:
        return None
    if record.get("fingerprint") != spec.fingerprint():
        log.warning("%s holds a set made with other settings (%s): it is replaced when this run finishes",
                    out, ", ".join(_differences(record, spec)) or "unrecorded")
        return None
    return record["fingerprint"] if (out / MANIFEST).is_file() else None


def _differences(record: dict, spec: SetSpec) -> list[str]:
    """The settings in which ``record`` (a generate.json) differs from ``spec``."""
    new = _settings_record(spec, None)
    return [k for k in new if k not in ("fingerprint", "n_per_class") and record.get(k) != new[k]]


def _open_stage(stage: Path, spec: SetSpec) -> None:
    """The staging folder for ``spec``: images staged with other settings (or unrecorded ones) are discarded
    before this run's settings are recorded, and recorded before its first image is drawn, so every staged
    image was drawn with the recorded settings."""
    from medti.atomic import write_json

    old = _read_json(stage / SETTINGS_FILE)
    if stage.exists() and (old is None or old.get("fingerprint") != spec.fingerprint()):
        staged = sum(1 for p in stage.glob("*/*.png") if not p.name.startswith("."))
        if staged:
            log.warning("discarding %d images staged in %s with other settings (%s)", staged, stage,
                        ", ".join(_differences(old, spec)) if old else "unrecorded")
        shutil.rmtree(stage)
    open_staging(stage, "unfinished synthetic sets")
    if old is None or old.get("fingerprint") != spec.fingerprint():
        write_json(stage / SETTINGS_FILE, _settings_record(spec, None))


def _adopt(out: Path, stage: Path, items: list[Item]) -> int:
    """Hard-link the images of a finished set in ``out`` (same settings) into ``stage``; return how many."""
    from medti.atomic import atomic_path

    n = 0
    for it in items:
        src, dst = out / it.path, stage / it.path
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                with atomic_path(dst, fsync=False) as tmp:
                    shutil.copy2(src, tmp)
            n += 1
    return n


def _drop_extra(stage: Path, spec: SetSpec, items: list[Item]) -> None:
    """Remove staged images that are not in the set (a smaller ``n_per_class`` than before): the folder holds
    exactly what the manifest lists."""
    wanted = {it.path for it in items}
    for c in spec.classes:
        for png in (stage / c.name).glob(f"{c.name}-*.png"):
            if f"{c.name}/{png.name}" not in wanted:
                png.unlink()
    names = {c.name for c in spec.classes}
    for entry in stage.iterdir():
        if entry.is_dir() and entry.name not in names and entry.name != SHARDS:
            shutil.rmtree(entry)



def _settings_record(spec: SetSpec, stats: dict | None) -> dict:
    d = asdict(spec)
    d.pop("shard")
    d["fingerprint"] = spec.fingerprint()
    if stats is not None:
        d["stats"] = stats
    return d


def _start_or_resume(out: Path, spec: SetSpec) -> None:
    """A shard's start: keep images made with these settings; shards share a folder, so a folder holding a set
    made with other settings is an error naming the settings that differ."""
    from medti.atomic import write_json

    record = out / SETTINGS_FILE
    old = _read_json(record)
    if old is not None and old.get("fingerprint") != spec.fingerprint():
        raise InputError(f"{out}: holds images made with other settings ({', '.join(_differences(old, spec))}) than "
                         f"shard {spec.shard[0]}/{spec.shard[1]}; give the shards one folder per settings")
    if old is None:
        stray = [c.name for c in spec.classes if any((out / c.name).glob(f"{c.name}-*.png"))]
        if stray:
            raise InputError(f"{out}: holds images of classes {stray} but no {SETTINGS_FILE} "
                             "(not a medti synthetic set): choose an empty folder")
        write_json(record, _settings_record(spec, None))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_png(image: torch.Tensor, path: Path, channels: str = "rgb") -> None:
    """A [3, H, W] float image in [0, 1] -> 8-bit PNG (grey: the channel mean), written atomically."""
    import numpy as np
    import torch
    from PIL import Image

    from medti.atomic import atomic_path

    arr = image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if channels == "grey":
        pil = pil.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")


def manifest_rows(out: Path, spec: SetSpec, items: list[Item]) -> pd.DataFrame:
    from medti.hashing import file_sha256
    from medti.manifest import SYNTHETIC_COLUMNS

    missing = [it.path for it in items if not (out / it.path).is_file()]
    if missing:
        raise InputError(f"{out}: {len(missing)} images are missing (first: {missing[0]})")
    rows = [{
        "path": it.path, "modality": spec.modality, "class": it.cls.name, "label": it.cls.label,
        "subject_id": f"syn-{it.cls.name}-{it.index:05d}", "split": "train",
        "source_checksum": file_sha256(out / it.path), "synthetic": True, "prompt": it.prompt,
        "negative_prompt": spec.negative_prompt, "seed": it.seed, "scheduler": spec.scheduler,
        "steps": spec.steps, "guidance": spec.guidance, "embedding_checksum": it.cls.embedding_checksum,
        "base_model": spec.base_model,
    } for it in items]
    return pd.DataFrame(rows, columns=SYNTHETIC_COLUMNS)


def _write_rows(df: pd.DataFrame, path: Path) -> None:
    from medti.manifest import write_manifest

    path.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(df, path)


def _write_set(out: Path, df: pd.DataFrame, class_names: list[str]) -> None:
    """The final manifest and the sample grid."""
    write_grid(out, df, class_names)
    _write_rows(df, out / MANIFEST)


def write_grid(out: Path, df: pd.DataFrame, class_order: list[str], per_class: int = GRID_PER_CLASS) -> Path:
    """``grid.png``: the first images of each class, one labelled row per class."""
    from PIL import Image

    from medti.figures import image_grid

    ncols = min(per_class, int(df.groupby("class").size().max()))
    images, labels = [], []
    for name in class_order:
        rows = df[df["class"] == name].sort_values("path").head(ncols)
        cells = [Image.open(out / p).convert("RGB") for p in rows["path"]]
        images.extend(cells + [None] * (ncols - len(cells)))
        labels.append(name)
    image_grid([im if im is not None else _blank(images) for im in images], out / GRID, ncols=ncols,
               row_labels=labels, suptitle=f"{df['modality'].iloc[0]}: synthetic samples")
    return out / GRID


def _blank(images):
    import numpy as np

    first = next(im for im in images if im is not None)
    return np.full((first.size[1], first.size[0], 3), 255, dtype=np.uint8)


def merge_shards(out: str | os.PathLike, sources: Sequence[str | os.PathLike] | None = None) -> Path:
    """Join the shards found in ``sources`` (folders; default ``out`` itself) into ``out``'s manifest.

    Every shard 1..N of one fingerprint must be present; images held in other folders are copied into
    ``out``. Shards run in the same folder need no copying.
    """
    from medti.atomic import output_lock

    out = Path(out)
    with output_lock(out, what="writing this synthetic set"):
        return _merge_shards(out, [Path(s) for s in (sources or [out])])


def _merge_shards(out: Path, sources: list[Path]) -> Path:
    from medti.atomic import atomic_path, write_json

    parts: dict[int, tuple[Path, dict, Path]] = {}
    fingerprint, total = None, None
    for src in sources:
        found = sorted((src / SHARDS).glob("shard-*-of-*.json")) if (src / SHARDS).is_dir() else []
        if not found:
            raise InputError(f"{src}: no shards found (expected {src / SHARDS}/shard-K-of-N.json from --shard K/N)")
        for info_path in found:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            k, n = info["shard"]
            if fingerprint is None:
                fingerprint, total = info["fingerprint"], n
            if info["fingerprint"] != fingerprint:
                raise InputError(f"{info_path}: shard {k}/{n} was made with other settings than the other shards")
            if n != total:
                raise InputError(f"{info_path}: shard {k}/{n} belongs to a split into {n}, the others into {total}")
            if k in parts and parts[k][0].resolve() != src.resolve():
                raise InputError(f"{info_path}: shard {k}/{n} is also in {parts[k][0]}")
            parts[k] = (src, info, src / SHARDS / f"manifest-{k}-of-{n}.csv")
    missing = sorted(set(range(1, total + 1)) - set(parts))
    if missing:
        raise InputError(f"cannot merge: shard(s) {', '.join(f'{k}/{total}' for k in missing)} not found in "
                         f"{', '.join(map(str, sources))} (run them first)")
    from medti.manifest import read_manifest

    frames = []
    for k in sorted(parts):
        src, _, manifest = parts[k]
        df = read_manifest(manifest, absolute=False)
        for rel in df["path"]:
            target = out / rel
            if src.resolve() != out.resolve() and not target.is_file():
                with atomic_path(target) as tmp:
                    shutil.copyfile(src / rel, tmp)
        frames.append(df)
    merged = pd.concat(frames, ignore_index=True)
    dupes = merged["path"][merged["path"].duplicated()]
    if len(dupes):
        raise InputError(f"cannot merge: image {dupes.iloc[0]} is in more than one shard")
    settings = json.loads((parts[1][0] / SETTINGS_FILE).read_text(encoding="utf-8"))
    if out.resolve() != parts[1][0].resolve():
        out.mkdir(parents=True, exist_ok=True)
    settings["stats"] = {"images": int(len(merged)), "shards": total}
    order = [c["name"] for c in settings.get("classes", [])] or sorted(merged["class"].unique())
    write_json(out / SETTINGS_FILE, settings)
    _write_set(out, merged, order)
    log.info("merged %d shards (%d images) into %s", total, len(merged), out / MANIFEST)
    return out / MANIFEST
