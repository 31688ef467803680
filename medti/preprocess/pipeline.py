"""``medti prepare``: any configured source -> one de-identified, subject-wise split dataset folder.

The output folder (written atomically) holds::

    manifest.csv                     one row per image (medti.manifest.REAL_COLUMNS)
    images/<split>/<class>/<id>.png  8-bit, size x size; <id> derives from the source checksum, never a name
    rejects.csv                      input_id, kind, reason: every input not used, named by its salted input id
                                     (the private lookup .medti/input-paths.jsonl and --show-paths give the path)
    summary.json                     counts per split and class, rejects per kind, settings
    samples.png                      sample images per class (channels.png: each sequence of a stack)

Inputs stream through a process pool (``workers``): each worker reads one input, writes its PNG under the
image's de-identified id into a staging folder and returns metadata only, so pixels are never gathered in
one process. Splits need every subject, so images are moved to their split folders at the end. What each
input gave is journaled as it arrives, so a killed run resumes where it stopped (``preprocess.resume``).

No input file or folder name, nor the source root, reaches a written file or a message: inputs are named by
salted input ids (medti.deid.InputNames). A write that fails for want of space, an I/O error or a read-only
output is the machine's fault, never an input's: the run stops with one line naming the output folder and
the cause, keeps the journal and the staged images so that the same command resumes, and exits non-zero.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medti.config import project_root, stage
from medti.deid import Deidentifier, InputNames, load_salt
from medti.errors import ConfigError, InputError, ResourceError
from medti.preprocess.imaging import window_setting
from medti.preprocess.inputs import check_dicom_keyword
from medti.preprocess.labels import Labeler
from medti.preprocess.records import (
    Context,
    ImageRecord,
    Reject,
    Rejected,
    Result,
    StagingWriteError,
    is_resource_error,
)
from medti.preprocess.resume import PrepareJournal, resume_folder
from medti.preprocess.splitting import split_mode

if TYPE_CHECKING:
    from medti.preprocess.dicom import DicomSource
    from medti.preprocess.folders import FolderSource
    from medti.preprocess.medmnist import MedmnistSource
    from medti.preprocess.series import DicomSeriesSource
    from medti.preprocess.volumes import VolumeSource

    Source = DicomSource | DicomSeriesSource | FolderSource | MedmnistSource | VolumeSource

log = logging.getLogger("medti.prepare")

SAMPLES_PER_CLASS = 8
STACK_SAMPLES_PER_CLASS = 3


@dataclass
class PrepareResult:
    out: Path
    images: int
    rejected: int
    summary: dict
    rejects: list = None  # (input id, kind, reason) as rejects.csv lists them
    input_paths: dict = None  # input id -> real path: for the terminal (--show-paths), never written here


# -- sources -------------------------------------------------------------------------------------------------
def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def make_source(cfg: dict, classes: list[str], root: Path) -> Source:
    """The source object for a modality's ``source`` settings; ConfigError/InputError on bad settings."""
    kind = cfg["type"]
    if not cfg.get("path"):
        raise ConfigError(f"source.path: required for a {kind} source")
    path = _resolve(cfg["path"], root)
    if kind == "medmnist":
        from medti.preprocess.medmnist import MedmnistSource

        return MedmnistSource(cfg, path, classes)
    if not path.is_dir():
        raise InputError("source.path: the source folder is not there (check the path params.yaml or --input "
                         "gives)")
    labels_csv = (cfg.get("labels") or {}).get("csv")
    exclude = {_resolve(labels_csv, root)} if labels_csv else set()
    if kind == "dicom" and cfg.get("series"):
        from medti.preprocess.series import DicomSeriesSource

        return DicomSeriesSource(cfg, path, exclude)
    if kind == "dicom":
        from medti.preprocess.dicom import DicomSource

        return DicomSource(cfg, path, exclude)
    if kind == "volume":
        from medti.preprocess.volumes import VolumeSource

        return VolumeSource(cfg, path, exclude)
    from medti.preprocess.folders import FolderSource

    return FolderSource(cfg, path, exclude)


def _item_inputs(source, item) -> list[str]:
    """The input paths (relative to the source root) of one work item: a file, or a source's group."""
    return [item] if isinstance(item, str) else source.inputs(item)


# -- workers ---------------------------------------------------------------------------------------------------
_SOURCE = None
_CTX: Context | None = None


def _init_worker(source, ctx: Context, parent: int | None = None) -> None:
    global _SOURCE, _CTX
    from medti.preprocess.dicom import quiet_pydicom

    _SOURCE, _CTX = source, ctx
    quiet_pydicom()
    _quiet_simpleitk()
    if parent is not None:
        _die_with(parent)


def _quiet_simpleitk() -> None:
    """ITK's warnings name the file they read (an input path): never let them reach stderr or a log."""
    import sys

    if "SimpleITK" in sys.modules or getattr(_SOURCE, "kind", "") in ("volume", "dicom-series"):
        try:
            import SimpleITK as sitk

            sitk.ProcessObject.SetGlobalWarningDisplay(False)
        except (ImportError, AttributeError):
            pass


def _die_with(parent: int) -> None:
    """A pool worker ends when the main process does (Linux): a killed run leaves no orphan that holds the
    output's locks (inherited through fork) or writes a late staged image."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _call(task):
    """``(index, source.<method>(item, ctx))``; a per-input failure comes back as Rejects, never raised."""
    method, index, item = task
    return index, _run(method, item)


def _run(method: str, item):
    try:
        return getattr(_SOURCE, method)(item, _CTX)
    except Rejected as exc:
        if exc.line is None and isinstance(item, str):  # rejected before its label was looked up
            exc.line = _CTX.labeler.line_of({"path": item})
        return exc.rejects(_item_inputs(_SOURCE, item))
    except (MemoryError, StagingWriteError):  # the machine's fault, not the input's: stops the run
        raise
    except Exception as exc:  # noqa: BLE001 - a library failing on one odd input must not stop the rest
        reason = f"unexpected {type(exc).__name__} while reading it"
        return [Reject(p, "error", reason) for p in _item_inputs(_SOURCE, item)]


class Runner:
    """Maps a source method over items in ``workers`` processes (in this process when workers is 1)."""

    def __init__(self, source: Source, ctx: Context, workers: int) -> None:
        self.source, self.ctx, self.workers = source, ctx, workers
        self.pool = None

    def __enter__(self) -> Runner:
        _init_worker(self.source, self.ctx)
        if self.workers > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(self.workers, initializer=_init_worker,
                                                    initargs=(self.source, self.ctx, os.getpid()))
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
        return False

    def __call__(self, method: str, items: list, desc: str = "preparing") -> Iterator:
        """Everything the items give, flattened: records, rejects or whatever ``method`` returns."""
        for _, outs in self.per_item(method, items, desc):
            yield from outs

    def per_item(self, method: str, items: list, desc: str = "preparing",
                 done: int = 0) -> Iterator[tuple[int, list]]:
        """``(index in items, [what it gave])`` in the order the items finish; ``done`` items are already
        counted in the progress bar."""
        from medti.logs import progress

        tasks = [(method, i, item) for i, item in enumerate(items)]
        if self.pool is None or len(items) < 2:
            results = map(_call, tasks)
        else:
            chunk = max(1, min(32, len(items) // (self.workers * 8)))
            results = self.pool.imap_unordered(_call, tasks, chunksize=chunk)
        for index, out in progress(results, total=len(tasks) + done, initial=done, desc=desc, unit="input"):
            if isinstance(out, list):  # rejects of one item
                yield index, out
            elif isinstance(out, Result):
                yield index, [*out.rejects, *out.records]
            else:
                yield index, [out]


# -- the stage -------------------------------------------------------------------------------------------------
def prepare_settings(params: dict, modality: str, overrides: dict | None = None) -> dict:
    """``prepare`` with the modality's ``overrides.prepare`` and then ``overrides`` (the command line) merged,
    validated against the schema's ``prepare`` section."""
    import jsonschema

    from medti.config import deep_merge, load_schema

    settings = deep_merge(stage(params, "prepare", modality), {k: v for k, v in (overrides or {}).items()
                                                               if v is not None})
    schema = load_schema()
    validator = jsonschema.Draft7Validator({"definitions": schema["definitions"], **schema["properties"]["prepare"]})
    for error in sorted(validator.iter_errors(settings), key=lambda e: len(list(e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path)
        raise ConfigError(f"prepare{'.' + where if where else ''} (modality {modality}): {error.message}")
    return settings


def prepare_dataset(params: dict, modality: str, out: str | os.PathLike | None = None, *,
                    overrides: dict | None = None, track_run: bool = True) -> PrepareResult:
    """Prepare ``modality`` of validated ``params`` into ``out`` (default ``prepare.out/<modality>``);
    ``overrides`` (workers, on_error, size...) win over params.yaml."""
    from medti.atomic import atomic_dir, sweep_stale_temporaries
    from medti.config import modality as modality_settings
    from medti.preprocess.dicom import quiet_pydicom
    from medti.tracking import track

    mod = modality_settings(params, modality)
    settings = prepare_settings(params, modality, overrides)
    split_mode(settings["split"])  # a bad split fails now, not after reading every input
    root = project_root(params)
    out = Path(out) if out is not None else root / settings["out"] / modality
    classes = list(mod["classes"])
    cfg = mod["source"]
    quiet_pydicom()
    source = make_source(cfg, classes, root)
    channels = len(getattr(source, "channel_names", []) or [])
    if settings["channels"] == "grey" and channels == 3:
        raise ConfigError(f"prepare.channels: grey cannot hold the 3-sequence stack of {modality}; use rgb")
    labeler = Labeler(cfg.get("labels"), classes, root, "source.labels", source.label_keys)
    if labeler.tag:
        if cfg["type"] != "dicom":
            raise ConfigError(f"modalities.{modality}.source.labels.tag: only DICOM files have attributes to read "
                              f"a label from; give labels.csv")
        check_dicom_keyword(labeler.tag, f"modalities.{modality}.source.labels.tag")
    if cfg["type"] == "dicom" and not (labeler.from_csv or labeler.tag):
        raise ConfigError(f"modalities.{modality}.source.labels: "
                          "a DICOM source needs labels.csv (with key) or labels.tag")
    if cfg["type"] == "volume" and not labeler.from_csv:
        raise ConfigError(f"modalities.{modality}.source.labels: "
                          "a volume source needs labels.csv (with key path or case)")
    salt = load_salt(root)
    deid = Deidentifier(salt)
    names = InputNames(deid, source.root)
    journal = PrepareJournal(out, _fingerprint(modality, classes, settings, cfg, labeler), salt)
    try:
        journal.open()  # locks the output first: a second run on it stops here, before it sweeps anything
    except OSError as exc:
        if is_resource_error(exc):
            journal.keep()
            raise ResourceError(_resource_message(out, exc, 0)) from None
        raise
    try:
        sweep_stale_temporaries(out.parent, name=out.name)  # not the siblings that parallel jobs are writing
        with track(params if track_run else None, "prepare", run_name=f"prepare-{modality}",
                   tags={"modality": modality}, root=root if track_run else None) as tracker, atomic_dir(out) as tmp:
            ctx = Context(classes=classes, size=int(settings["size"]), fit=settings["fit"],
                          channels=settings["channels"], normalise=settings["normalise"],
                          percentiles=tuple(settings["percentiles"]),
                          window=window_setting(cfg.get("window")), frames=cfg.get("frames") or "middle",
                          staging=journal.staging, deid=deid, labeler=labeler,
                          min_size=int(settings["min_size"]), max_pixels=settings["max_pixels"])
            fail_fast = settings["on_error"] == "fail"
            try:
                with Runner(source, ctx, int(settings["workers"])) as run:
                    items, rejects = source.plan(run, labeler)
                    if fail_fast and rejects:
                        _fail(names, rejects[0])
                    records = _process(run, source, items, journal, rejects, fail_fast, names)
            finally:
                journal.close()
            rejects += _label_rows_without_image(labeler, records, rejects, names, fail_fast)
            records, dupes = _drop_duplicates(records, names)
            rejects += dupes
            if not records:
                raise InputError(_empty_message(len(items), rejects, names))
            _check_every_class(records, classes)
            summary = _finish(tmp, journal.staging, records, rejects, classes, settings, params.get("seed", 0),
                              modality, cfg, source, names)
            _log_summary(modality, summary, gland_mask=bool(cfg.get("gland_mask")))
            tracker.log_params({"modality": modality, "source_type": cfg["type"], **{
                k: settings[k]
                for k in ("size", "fit", "channels", "normalise", "split", "ti_per_class", "on_error", "workers",
                          "min_size", "max_pixels")}})
            tracker.log_metrics({"images": summary["images_total"], "subjects": summary["subjects_total"],
                                 "rejected": summary["rejected"]})
            tracker.log_artifact(tmp / "summary.json")
            tracker.log_artifact(tmp / "samples.png")
    except BaseException as exc:
        kept = journal.keep()  # what was done so far serves the rerun (after the input or setting is fixed)
        _save_lookup(names, root)
        if is_resource_error(exc):
            raise ResourceError(_resource_message(out, exc, kept)) from None
        raise
    journal.remove()  # the output is in place
    _save_lookup(names, root)
    listed = sorted(rejects, key=lambda r: (r.path, r.kind))
    return PrepareResult(out, summary["images_total"], summary["rejected"], summary,
                         [(names.id(r.path), r.kind, r.reason) for r in listed], dict(names.paths))


def _resource_message(out: Path, exc: OSError, kept: int) -> str:
    """One line: the folder, the cause, what is kept (as counted on disk) and what to do."""
    import errno as errnos

    code = errnos.errorcode.get(exc.errno, str(exc.errno))
    cause = f"{exc.strerror or 'write failed'} ({code})"
    kept_text = (f"{kept} inputs done so far are kept in {resume_folder(out)}, and the same command resumes from "
                 f"them" if kept else "nothing could be kept for a rerun")
    return f"{out.parent}: cannot write the output of prepare: {cause}; {kept_text}. Nothing was rejected for it"


def _save_lookup(names: InputNames, root: Path) -> None:
    """The private id -> path lookup beside the salt; a failure to write it only costs the lookup."""
    try:
        names.save(root)
    except OSError as exc:
        log.warning("prepare: could not add to the private input lookup beside the salt (%s)", exc.strerror)


def _fingerprint(modality: str, classes: list[str], settings: dict, cfg: dict, labeler: Labeler) -> dict:
    """Everything that shapes what one input gives: a journal written under another fingerprint is not reused."""
    from medti import __version__
    from medti.preprocess.resume import file_checksum

    shaping = ("size", "fit", "channels", "normalise", "percentiles", "min_size", "max_pixels")
    return {"medti": __version__, "modality": modality, "classes": classes, "source": cfg,
            "settings": {k: settings[k] for k in shaping}, "labels_csv": file_checksum(labeler.csv_path)}


def _process(run: Runner, source, items: list, journal: PrepareJournal, rejects: list[Reject],
             fail_fast: bool, names: InputNames) -> list[ImageRecord]:
    """Every item's records (rejects appended to ``rejects``): replayed from the journal of an interrupted run
    where its files are unchanged, processed (and journaled) otherwise."""
    records: list[ImageRecord] = []

    def take(outs) -> None:
        for out_item in outs:
            if isinstance(out_item, Reject):
                if fail_fast:
                    _fail(names, out_item)
                rejects.append(out_item)
            else:
                records.append(out_item)

    stamped = getattr(source, "stamped_files", None) or (lambda item: _item_inputs(source, item))
    todo, todo_keys = [], []
    for item in items:
        key, stamp = journal.item_key(item), journal.stamp(source.root, stamped(item))
        done = journal.replay(key, stamp, _item_inputs(source, item))
        if done is None:
            todo.append(item)
            todo_keys.append((key, stamp, _item_inputs(source, item)))
        else:
            take([*done[1], *done[0]])
    if len(todo) < len(items):
        log.info("prepare: resuming an interrupted run: %d of %d inputs already done", len(items) - len(todo),
                 len(items))
    for index, outs in run.per_item("process", todo, done=len(items) - len(todo)):
        rejects_of_item = [o for o in outs if isinstance(o, Reject)]
        if not any(r.kind == "error" for r in rejects_of_item):  # an unexpected error may pass: read it again
            key, stamp, inputs = todo_keys[index]
            journal.add(key, stamp, [o for o in outs if isinstance(o, ImageRecord)], rejects_of_item, inputs)
        take(outs)
    return records


def _fail(names: InputNames, reject: Reject):
    input_id = names.id(reject.path)
    error = InputError(f"source input {input_id}: {reject.reason} (prepare.on_error is fail; the private lookup "
                       f"beside the salt or medti prepare --show-paths gives its path)")
    error.input_paths = {input_id: names.paths[input_id]}  # for --show-paths (the terminal only)
    raise error


def _empty_message(n_items: int, rejects: list[Reject], names: InputNames) -> str:
    kinds = Counter(r.kind for r in rejects)
    first = f"; e.g. input {names.id(rejects[0].path)}: {rejects[0].reason}" if rejects else ""
    detail = ", ".join(f"{k} {n}" for k, n in kinds.most_common())
    return f"source.path: no usable images ({n_items} inputs; rejected: {detail or 'none'}{first})"


def _check_every_class(records: list[ImageRecord], classes: list[str]) -> None:
    counts = Counter(r.cls for r in records)
    empty = [c for c in classes if not counts[c]]
    if empty:
        found = ", ".join(f"{c} {counts[c]}" for c in classes)
        raise InputError(f"source.path: no usable images of class {', '.join(repr(c) for c in empty)} ({found}); "
                         f"every class needs images (check the labels and rejects)")


def _label_rows_without_image(labeler: Labeler, records, rejects, names: InputNames,
                              fail_fast: bool) -> list[Reject]:
    if not labeler.from_csv:
        return []
    used = {r.line for r in records if r.line is not None} | {r.line for r in rejects if r.line is not None}
    out = []
    for line, _ in labeler.unmatched_rows(used):
        reject = Reject(f"{labeler.csv_path}#line{line}", "label_without_image",
                        f"labels file line {line}: no image has this {labeler.key}")
        if fail_fast:
            raise InputError(f"{labeler.setting}: {reject.reason} (prepare.on_error is fail)")
        out.append(reject)
    return out


def _drop_duplicates(records: list[ImageRecord], names: InputNames) -> tuple[list[ImageRecord], list[Reject]]:
    """Inputs with the same bytes as an earlier one (by path) are copies: kept once, the rest listed."""
    by_checksum: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_checksum[r.source_checksum].append(r)
    keep, rejects = [], []
    for group in by_checksum.values():
        first_inputs = min(r.inputs for r in group)
        for r in group:
            if r.inputs == first_inputs:
                keep.append(r)
            else:
                rejects += [Reject(p, "duplicate", f"the same content as input {names.id(first_inputs[0])}")
                            for p in r.inputs]
    return keep, rejects


def _finish(tmp: Path, staging: Path, records, rejects, classes, settings, seed: int, modality: str, cfg: dict,
            source, names: InputNames) -> dict:
    """Split, pick the embedding subset, move the staged images into ``tmp`` and write the tables. Splits and
    subsets follow the seed and salt-free keys (the records' ``order``), so every clone gets the same ones
    whatever its salt. On a failure the moved images go back to staging, so that a rerun can replay them."""
    import pandas as pd

    from medti.manifest import REAL_COLUMNS, SPLITS, write_manifest
    from medti.preprocess.splitting import assign_splits, pick_subset, subject_class

    official = all(r.split is not None for r in records)
    by_subject: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_subject[r.subject_id].append(r)
    order = {s: min(r.order or r.image_id for r in rs) for s, rs in by_subject.items()}
    if official:
        split_of = None
    else:
        split_of = assign_splits({s: subject_class([r.cls for r in rs], classes) for s, rs in by_subject.items()},
                                 classes, settings["split"], seed, modality, order=order)
    rows, unused = [], []
    for r in sorted(records, key=lambda r: r.image_id):
        split = r.split if official else split_of[r.subject_id]
        if split is None:
            unused.append(r)
            continue
        rows.append((r, split))
    ti_ids = set()
    for index, cls in enumerate(classes):
        train = [(r.subject_id, r.image_id) for r, split in rows if split == "train" and r.cls == cls]
        ti_ids.update(pick_subset(train, int(settings["ti_per_class"]), seed + 7919 * (index + 1), order=order))
    for r in unused:
        rejects += [Reject(p, "unused", f"left out: prepare.split takes fewer subjects of class '{r.cls}' "
                                        "than there are")
                    for p in r.inputs]
    table, moved = [], []
    try:
        for split, cls in {(split, r.cls) for r, split in rows}:
            (tmp / "images" / split / cls).mkdir(parents=True)
        for r, split in rows:
            rel = Path("images") / split / r.cls / f"{r.image_id}.png"
            os.replace(staging / r.staged, tmp / rel)
            moved.append((staging / r.staged, tmp / rel))
            table.append({"path": rel.as_posix(), "modality": modality, "class": r.cls,
                          "label": classes.index(r.cls), "subject_id": r.subject_id, "split": split,
                          "source_checksum": r.source_checksum, "synthetic": False, "ti_subset": r.image_id in ti_ids})
        manifest = pd.DataFrame(table, columns=REAL_COLUMNS)
        write_manifest(manifest, tmp / "manifest.csv")
        listed = sorted(rejects, key=lambda r: (r.path, r.kind))  # in memory: the paths are not written
        reject_table = pd.DataFrame([(names.id(r.path), r.kind, r.reason) for r in listed],
                                    columns=["input_id", "kind", "reason"])
        from medti.atomic import atomic_path, write_json

        with atomic_path(tmp / "rejects.csv") as t:
            reject_table.to_csv(t, index=False, lineterminator="\n")
        summary = _summary(manifest, rejects, classes, settings, modality, cfg, official, SPLITS,
                           notes=Counter(r.note for r in records if r.note))
        write_json(tmp / "summary.json", summary)
        _samples(tmp, manifest, classes, modality, getattr(source, "channel_names", []))
    except BaseException:
        for back, there in moved:  # same file system: a rename needs no space
            try:
                os.replace(there, back)
            except OSError:
                pass
        raise
    for r in unused:
        (staging / r.staged).unlink(missing_ok=True)
    return summary


def _summary(manifest, rejects, classes, settings, modality, cfg, official, splits, notes=None) -> dict:
    """``notes``: how many images (used or not) carry each ImageRecord.note."""
    def counts(df, unique_subjects=False):
        column = "subject_id" if unique_subjects else "path"
        return {s: {c: int(df[(df.split == s) & (df["class"] == c)][column].nunique())
                    for c in classes} for s in splits}

    ti = manifest[manifest.ti_subset]
    short = [c for c in classes if int((ti["class"] == c).sum()) < int(settings["ti_per_class"])]
    extra = {}
    if cfg["type"] == "volume" and cfg.get("slice") == "largest_lesion":
        from medti.preprocess.volumes import SLICE_FALLBACKS

        # lesion-free cases that took the volume's middle slice, by why: no gland mask, an empty one
        extra["volume_middle_slices"] = {k: int((notes or {}).get(k, 0)) for k in SLICE_FALLBACKS}
    return {
        "modality": modality,
        "source_type": cfg["type"],
        "classes": classes,
        "splits_from": "source (official)" if official else "subjects",
        "images": counts(manifest),
        "subjects": counts(manifest, unique_subjects=True),
        "images_total": int(len(manifest)),
        "subjects_total": int(manifest.subject_id.nunique()),
        "ti_subset": {c: int((ti["class"] == c).sum()) for c in classes},
        "ti_subset_short": short,
        "rejected": len(rejects),
        "rejected_by_kind": dict(sorted(Counter(r.kind for r in rejects).items())),
        "settings": {k: settings[k] for k in ("size", "fit", "channels", "normalise", "percentiles", "split",
                                              "ti_per_class", "on_error", "min_size", "max_pixels")},
        **extra,
    }


def _samples(tmp: Path, manifest, classes, modality: str, channel_names: list[str]) -> None:
    """samples.png: a row of images per class; channels.png for stacks: each sequence beside the composite."""
    import numpy as np
    from PIL import Image

    from medti.figures import image_grid

    def pick(cls, n):
        rows = manifest[manifest["class"] == cls].sort_values(["split", "path"])
        preferred = rows[rows.split == "train"]
        rows = preferred if len(preferred) >= n else rows
        return [np.asarray(Image.open(tmp / p)) for p in rows.path.head(n)]

    images = []
    for cls in classes:  # every class has images (checked before), a row of up to SAMPLES_PER_CLASS
        picked = pick(cls, SAMPLES_PER_CLASS)
        images += picked + [np.zeros_like(picked[0])] * (SAMPLES_PER_CLASS - len(picked))
    image_grid(images, tmp / "samples.png", ncols=SAMPLES_PER_CLASS, row_labels=classes,
               suptitle=f"{modality}: prepared samples per class")
    if len(channel_names) == 3:
        cells, titles, row_labels = [], [], []
        for cls in classes:
            for img in pick(cls, STACK_SAMPLES_PER_CLASS):
                cells += [img] + [img[..., c] for c in range(3)]
                titles += ["RGB"] + list(channel_names)
                row_labels.append(cls)
        image_grid(cells, tmp / "channels.png", ncols=4, titles=titles, row_labels=row_labels,
                   suptitle=f"{modality}: the stacked sequences (R, G, B) per class")


def _log_summary(modality: str, summary: dict, gland_mask: bool = False) -> None:
    per = "; ".join(f"{s} " + "/".join(str(summary["images"][s][c]) for c in summary["classes"])
                    for s in summary["images"])
    log.info("prepare %s: %d images of %d subjects (%s: %s); %d rejected%s", modality, summary["images_total"],
             summary["subjects_total"], "/".join(summary["classes"]), per, summary["rejected"],
             (" (" + ", ".join(f"{k} {n}" for k, n in summary["rejected_by_kind"].items()) + ")")
             if summary["rejected"] else "")
    if summary["ti_subset_short"]:
        log.warning("prepare %s: fewer training images than ti_per_class for %s; the embedding subset uses all "
                    "of them (%s)", modality, ", ".join(summary["ti_subset_short"]),
                    ", ".join(f"{c} {n}" for c, n in summary["ti_subset"].items()))
    middle = summary.get("volume_middle_slices") or {}
    if sum(middle.values()) and gland_mask:
        log.warning("prepare %s: %d lesion-free cases took the volume's middle slice, not the gland's (no gland "
                    "mask file %d, an empty one %d; summary.json: volume_middle_slices)", modality,
                    sum(middle.values()), middle.get("no_gland_mask", 0), middle.get("empty_gland_mask", 0))
    elif sum(middle.values()):
        log.info("prepare %s: %d lesion-free cases took the volume's middle slice (source.gland_mask, a gland "
                 "mask per case, gives the middle of the gland instead)", modality, sum(middle.values()))
