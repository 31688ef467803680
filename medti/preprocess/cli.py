"""``medti prepare``: pipeline form (``--params --modality``) or standalone (a source on the command line)."""

from __future__ import annotations

from medti.cliutils import add_common, add_pipeline, csv_list, pipeline_mode
from medti.errors import ConfigError

# Options of the standalone form only (in pipeline mode, params.yaml holds them)
_STANDALONE_FLAGS = ("name", "seed", "source_type", "input", "labels", "label_key", "label_column", "label_tag",
                     "label_map", "classes", "series_channels", "series_group_by", "series_match", "sequences", "mask",
                     "slice", "frames", "window", "subject_from", "download")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "prepare", help="ingest DICOM, volumes, image folders or MedMNIST into a de-identified, split dataset",
        description="Turn a source (DICOM folder or multi-sequence series, .mha/.nii.gz volumes, PNG/JPEG/TIFF "
                    "folders, MedMNIST .npz) into 8-bit PNGs, a manifest, rejects.csv, summary.json and sample "
                    "grids, split by subject and stratified by class. Pipeline form: --params params.yaml "
                    "--modality M [--out DIR]. Standalone form: --source-type T --input PATH --classes a,b --out DIR "
                    "(plus labels and settings flags). A killed run started again with the same settings resumes: "
                    "inputs it had finished (and not changed since) are not read again.")
    add_common(p)
    add_pipeline(p, what="the modality to prepare")
    p.add_argument("--out", help="output folder (pipeline default: <prepare.out>/<modality>)")
    p.add_argument("--workers", type=int, help="worker processes (default: prepare.workers)")
    p.add_argument("--on-error", choices=["skip", "fail"],
                   help="per-file problems: skip (listed in rejects.csv) or fail")
    p.add_argument("--show-paths", action="store_true",
                   help="show the real path of each rejected (or failing) input on the terminal (stderr only, "
                        "refused when stderr is a file); files and logs always name inputs by salted ids")
    s = p.add_argument_group("settings (override prepare.* of params.yaml)")
    s.add_argument("--size", type=int, help="output images are SIZE x SIZE pixels")
    s.add_argument("--fit", choices=["resize", "crop", "pad"], help="how a non-square image becomes square")
    s.add_argument("--channels", choices=["rgb", "grey"], help="RGB output (grey replicated) or grey")
    s.add_argument("--normalise", choices=["minmax", "percentile"], help="intensity range where no window applies")
    s.add_argument("--split", help="train,val,test: fractions (0.5,0.25,0.25) or subject counts per class (100,50,50)")
    s.add_argument("--ti-per-class", type=int, help="images per class for embedding training (from train)")
    s.add_argument("--min-size", type=int, help="reject input images with a side shorter than this (px)")
    s.add_argument("--max-pixels", type=int, help="reject input images with more pixels (per frame or slice)")
    s.add_argument("--seed", type=int, help="seed of the split and subset (standalone; default: the schema's seed)")
    src = p.add_argument_group("standalone source")
    src.add_argument("--name", help="the data set's name, written as the manifest's modality (default: data)")
    src.add_argument("--source-type", choices=["dicom", "volume", "folder", "medmnist"])
    src.add_argument("--input", help="the source folder (or .npz file)")
    src.add_argument("--classes", help="class names in label order, e.g. normal,opacity; MedMNIST: the class of each "
                                       "label index, '-' to leave an index out (e.g. normal,-,pneumonia)")
    src.add_argument("--labels", metavar="CSV", help="labels CSV")
    src.add_argument("--label-key", choices=["path", "case", "SOPInstanceUID", "StudyInstanceUID", "PatientID"],
                     help="the CSV column naming the image")
    src.add_argument("--label-column", help="the CSV column holding the label (default: label)")
    src.add_argument("--label-tag", metavar="KEYWORD", help="take labels from this DICOM attribute instead")
    src.add_argument("--label-map", metavar="RAW=CLASS,...", help="map raw labels to class names")
    src.add_argument("--series-channels", metavar="A,B,C",
                     help="DICOM series: one pattern per channel, e.g. T2W,ADC,HBV")
    src.add_argument("--series-group-by", metavar="KEYWORD", help="DICOM series: attribute grouping a study")
    src.add_argument("--series-match", metavar="KEYWORD", help="DICOM series: attribute the channel patterns match")
    src.add_argument("--sequences", metavar="P1,P2,P3", help="volumes: one file pattern per channel, e.g. *_t2w.mha")
    src.add_argument("--mask", metavar="PATTERN", help="mask file pattern (volumes) or mask series pattern (DICOM)")
    src.add_argument("--slice", choices=["middle", "mask_middle", "largest_lesion"])
    src.add_argument("--frames", choices=["middle", "all"], help="multi-frame files: the middle frame or all")
    src.add_argument("--window", metavar="auto|none|C,W", help="VOI window: from the file, none, or centre,width")
    src.add_argument("--subject-from", help="DICOM keyword, file, folder, case or re:<regex>")
    src.add_argument("--download", action="store_true", help="MedMNIST: download with the medmnist package")
    p.set_defaults(func=run)


def _number(text: str):
    text = text.strip()
    return int(text) if text.isdigit() else float(text)


def _csv(text: str | None) -> list[str] | None:
    return csv_list(text) or None


def _settings(args) -> dict:
    out = {k: getattr(args, k) for k in ("size", "fit", "channels", "normalise", "workers", "min_size", "max_pixels")
           if getattr(args, k, None) is not None}
    if args.ti_per_class is not None:
        out["ti_per_class"] = args.ti_per_class
    if args.on_error is not None:
        out["on_error"] = args.on_error
    if args.split:
        parts = _csv(args.split)
        if len(parts) != 3:
            raise ConfigError(f"--split: give train,val,test (three numbers), not '{args.split}'")
        try:
            out["split"] = dict(zip(("train", "val", "test"), (_number(v) for v in parts)))
        except ValueError:
            raise ConfigError(f"--split: '{args.split}' is not three numbers") from None
    return out


def _window(text: str):
    if text in ("auto", "none"):
        return text
    parts = _csv(text) or []
    try:
        center, width = (float(v) for v in parts)
    except ValueError:
        raise ConfigError(f"--window: give auto, none or centre,width (e.g. 40,400), not '{text}'") from None
    return {"center": center, "width": width}


def _source(args) -> dict:
    if not args.source_type or not args.input:
        raise ConfigError("medti prepare: give --params (with --modality), or --source-type and --input (standalone)")
    src: dict = {"type": args.source_type, "path": args.input}
    labels = {}
    if args.labels:
        labels["csv"] = args.labels
    for flag, key in (("label_key", "key"), ("label_column", "column"), ("label_tag", "tag")):
        if getattr(args, flag):
            labels[key] = getattr(args, flag)
    if args.label_map:
        pairs = [item.split("=", 1) for item in _csv(args.label_map)]
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"--label-map: give raw=class pairs separated by commas, not '{args.label_map}'")
        labels["map"] = {k.strip(): v.strip() for k, v in pairs}
    if labels:
        src["labels"] = labels
    if args.series_channels:
        src["series"] = {"channels": _csv(args.series_channels)}
        if args.series_group_by:
            src["series"]["group_by"] = args.series_group_by
        if args.series_match:
            src["series"]["match"] = args.series_match
    for flag in ("mask", "slice", "frames", "subject_from"):
        if getattr(args, flag):
            src[flag] = getattr(args, flag)
    if args.sequences:
        src["sequences"] = _csv(args.sequences)
    if args.window:
        src["window"] = _window(args.window)
    classes = _csv(args.classes) or []
    if "-" in classes:
        if args.source_type != "medmnist":
            raise ConfigError("--classes: '-' (leave a label index out) is for --source-type medmnist only")
        src["class_names"] = [None if c == "-" else c for c in classes]
    if args.download:
        src["download"] = True
    return src


def _stderr_is_a_file(log_file) -> bool:
    """Whether stderr goes to a regular file (a redirect, or the --log file under Snakemake's ``2> {log}``)."""
    import os
    import stat
    import sys

    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return True  # unknown: treat as a file
    if log_file:
        try:
            if os.path.samestat(st, os.stat(log_file)):
                return True
        except OSError:
            pass
    return stat.S_ISREG(st.st_mode)


def _show(paths: dict, rows) -> None:
    """The real paths of ``rows`` ((input id, kind, reason)) on stderr, never through logging."""
    import sys

    for input_id, kind, _ in rows:
        path = paths.get(input_id)
        if path is not None:
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            print(f"medti prepare: input {input_id} ({kind}): {shown}", file=sys.stderr)


def run(args) -> int:
    from medti.errors import MedtiError

    show_paths = bool(getattr(args, "show_paths", False))
    if show_paths and _stderr_is_a_file(getattr(args, "log", None)):
        raise ConfigError("--show-paths: stderr goes to a file here; real input paths are shown on a terminal only "
                          "(the private lookup .medti/input-paths.jsonl beside the salt maps ids to paths)")
    try:
        return _run(args)
    except MedtiError as exc:
        if show_paths and getattr(exc, "input_paths", None):
            _show(exc.input_paths, [(k, "failed", "") for k in exc.input_paths])
        raise


def _run(args) -> int:
    settings = _settings(args)
    ctx = pipeline_mode(args, "prepare")
    if ctx:
        given = [f"--{f.replace('_', '-')}" for f in _STANDALONE_FLAGS if getattr(args, f) not in (None, False)]
        if given:
            raise ConfigError(f"{', '.join(given)}: standalone options; in pipeline mode the source and the seed "
                              f"come from params.yaml (modalities.<m>.source, seed)")
        from medti.preprocess import prepare_dataset

        result = prepare_dataset(*ctx, args.out, **settings)
    else:
        if not args.out:
            raise ConfigError("--out: required in the standalone form")
        classes = [c for c in _csv(args.classes) or [] if c != "-"]
        if not classes:
            raise ConfigError("--classes: required in the standalone form (class names in label order)")
        from medti.config import schema_default
        from medti.preprocess import prepare_source

        rest = {k: v for k, v in settings.items() if k not in ("workers", "on_error")}
        seed = schema_default("seed") if args.seed is None else args.seed
        result = prepare_source(_source(args), classes, args.out, modality=args.name or "data", settings=rest,
                                seed=seed, workers=args.workers, on_error=args.on_error)
    if getattr(args, "show_paths", False) and result.rejects:
        _show(result.input_paths or {}, result.rejects)
    print(result.out)
    return 0
