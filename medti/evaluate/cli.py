"""``medti evaluate``: one modality's classifier experiments (AUC statistics, ROC), image quality (FID/KID)
and a memorisation audit (the outputs: ``help(medti.evaluate)``).

Pipeline mode: ``--params params.yaml --modality M``: the settings are params.yaml's ``evaluate`` (the
modality's overrides merged in) and its ``seed``, the runs its ``classifier.conditions`` x ``classifier.seeds``,
and the inputs and outputs default to the params paths: ``--classifiers <classifier.out>/M``, ``--real
<prepare.out>/M/manifest.csv``, ``--synthetic <generate.out>/M`` (one ``<variant>/manifest.csv`` per
``train_embedding.variants``), ``--embeddings <train_embedding.out>/M`` (``<class>/<variant>.safetensors``),
``--out <evaluate.out>/M``, ``--metrics <evaluate.out>/M.metrics.json``, ``--roc <evaluate.out>/M.roc.csv``;
each condition's variant is its ``classifier.conditions.<c>.variant``.

Standalone: ``--classifiers DIR --real MANIFEST --out DIR [--synthetic MANIFEST|DIR] [--embeddings DIR]``; the
runs are the ``<condition>/seed<N>`` folders found (or ``--conditions``/``--seeds``), the variants the
``<variant>/manifest.csv`` folders found (a single manifest: one set, the main variant), metrics.json and roc.csv
go into ``--out`` unless ``--metrics``/``--roc`` say otherwise.

Either mode: ``--interpolate DIR`` (the modality's ``medti interpolate`` folder, ``<interpolate.out>/M``; only
where given) has the real-only classifiers judge its healthy-to-diseased sweeps: per weight, the share of the
images put in the sweep's target class (evaluate.json and metrics.json ``sweeps``, sweep_judgement.png).

Settings flags are params.yaml's ``evaluate`` keys (``quality.*`` and ``memorisation.*`` by their own name;
``quality.reference`` is ``--quality-reference``, ``memorisation.size`` and ``memorisation.level`` are
``--memorisation-size`` and ``--memorisation-level``); given, they win in either mode.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medti.cliutils import add_common, add_pipeline, csv_list, params_folder, pipeline_mode
from medti.errors import ConfigError

COMMAND = "evaluate"
# EvaluateSettings field -> its flag
SETTINGS_FLAGS = {key: "--" + key.replace("_", "-") for key in (
    "reference", "bootstrap", "confidence", "min_test_per_class", "inception", "max_images", "kid_subsets",
    "kid_subset_size", "quality_reference", "threshold", "memorisation_size", "memorisation_level", "top_k", "seed")}


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="AUC statistics of the classifier runs, image quality, memorisation audit",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    add_pipeline(p, what="the modality to evaluate (its classes, runs and paths come from params.yaml)")
    io = p.add_argument_group("inputs and outputs (pipeline mode: default from params.yaml's paths)")
    io.add_argument("--classifiers", metavar="DIR",
                    help="the modality's classifier runs: DIR/<condition>/seed<N>/ (medti train-classifier)")
    io.add_argument("--real", metavar="MANIFEST", help="the prepared (real) manifest")
    io.add_argument("--synthetic", metavar="DIR|MANIFEST",
                    help="the synthetic sets, DIR/<variant>/manifest.csv (or one manifest: the main variant's), "
                         "for quality, agreement and memorisation")
    io.add_argument("--embeddings", metavar="DIR",
                    help="the modality's embeddings, <class>/<variant>.safetensors or <class>.safetensors (checksums)")
    io.add_argument("--interpolate", metavar="DIR",
                    help="the modality's medti interpolate folder (interpolate.csv): the real-only classifiers judge "
                         "its sweeps (default: none, in either mode)")
    io.add_argument("--out", metavar="DIR", help="output folder")
    io.add_argument("--metrics", metavar="FILE", help="write metrics.json here instead of into --out")
    io.add_argument("--roc", metavar="FILE", help="write roc.csv (ROC plot data) here instead of into --out")
    runs = p.add_argument_group("the runs to expect (default: params.yaml's; standalone: the folders found)")
    runs.add_argument("--conditions", metavar="A,B", help="comma-separated conditions")
    runs.add_argument("--seeds", metavar="0,1", help="comma-separated seeds")
    s = p.add_argument_group("settings (default: params.yaml evaluate, else the schema's defaults)")
    s.add_argument("--reference", help="the condition the others are compared with")
    s.add_argument("--bootstrap", type=int, help="bootstrap resamples")
    s.add_argument("--confidence", type=float, help="confidence level of the intervals")
    s.add_argument("--min-test-per-class", type=int, help="fewer test images of a class: an error (no interval)")
    s.add_argument("--inception", metavar="auto|off", help="Inception FID/KID when available (auto) or never")
    s.add_argument("--max-images", type=int, help="images per set for FID/KID (a seeded random subset)")
    s.add_argument("--kid-subsets", type=int, help="KID: random subsets")
    s.add_argument("--kid-subset-size", type=int, help="KID: images per subset (at most half the smaller set)")
    s.add_argument("--quality-reference", metavar="ti|train",
                   help="FID/KID reference: the embeddings' training images (ti) or the whole train split")
    s.add_argument("--threshold", type=float, help="pixel correlation that flags a near-copy")
    s.add_argument("--memorisation-size", type=int, help="memorisation: images compared at this many grey pixels")
    s.add_argument("--memorisation-level", type=float,
                   help="memorisation: the flag's level (the share of chance flags with no copying)")
    s.add_argument("--top-k", type=int, help="memorisation: closest pairs shown")
    s.add_argument("--seed", type=int, help="seed of the bootstrap and the subsets (default: params.yaml's seed)")
    p.set_defaults(func=run)


def settings_overrides(args: argparse.Namespace) -> dict:
    """The settings given on the command line (None: not given), checked against the schema."""
    from medti.evaluate.settings import check_values

    values = {key: getattr(args, key) for key in SETTINGS_FLAGS}
    check_values({k: v for k, v in values.items() if v is not None}, f"medti {COMMAND}", names=SETTINGS_FLAGS)
    return values



def pipeline_paths(params: dict, modality: str) -> dict[str, Path]:
    """Where pipeline mode reads and writes when the flags leave it open (params.yaml's paths)."""
    evaluated = params_folder(params, "evaluate.out")
    return {"classifiers": params_folder(params, "classifier.out") / modality,
            "real": params_folder(params, "prepare.out") / modality / "manifest.csv",
            "synthetic": params_folder(params, "generate.out") / modality,  # <variant>/manifest.csv
            "embeddings": params_folder(params, "train_embedding.out") / modality,
            "out": evaluated / modality, "metrics": evaluated / f"{modality}.metrics.json",
            "roc": evaluated / f"{modality}.roc.csv"}


def run(args: argparse.Namespace) -> int:
    ctx = pipeline_mode(args, COMMAND)
    overrides = settings_overrides(args)
    try:
        seeds = csv_list(args.seeds, int)
    except ValueError:
        raise ConfigError(f"--seeds: '{args.seeds}' is not a comma-separated list of integers") from None
    conditions = csv_list(args.conditions)
    if ctx is not None:
        params, modality = ctx
        from medti.evaluate import evaluate_from_params

        paths = pipeline_paths(params, modality)
        given = {k: getattr(args, k) for k in paths}
        evaluate_from_params(params, modality, *(given[k] or paths[k] for k in ("classifiers", "real", "synthetic",
                                                                                "embeddings", "out")),
                             metrics_file=given["metrics"] or paths["metrics"], roc_file=given["roc"] or paths["roc"],
                             conditions=conditions, seeds=seeds, interpolate=args.interpolate, **overrides)
        return 0
    missing = [f"--{k}" for k in ("classifiers", "real", "out") if getattr(args, k) is None]
    if missing:
        raise ConfigError(f"medti {COMMAND}: standalone needs {', '.join(missing)} (or pipeline mode: --params P "
                          "--modality M)")
    from medti.evaluate import EvaluateSettings, evaluate

    evaluate(args.classifiers, args.real, args.out, synthetic_manifest=args.synthetic, embeddings=args.embeddings,
             conditions=conditions, seeds=seeds, settings=EvaluateSettings.from_section({}, **overrides),
             metrics_file=args.metrics, roc_file=args.roc, interpolate=args.interpolate)
    return 0
