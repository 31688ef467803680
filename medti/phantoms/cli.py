"""``medti phantoms``: write one kind of phantom DICOMs and their ``labels.csv``.

- pipeline mode: ``medti phantoms --params P --modality M [--out DIR]``: the kind is the modality's name
  (``--kind`` names another), the classes are the modality's, the subject count and seed are params.yaml's
  ``phantoms`` section, and the output defaults to ``<phantoms.out>/<M>``;
- standalone: ``medti phantoms --kind K --out DIR [--classes a,b] [--subjects-per-class N] [--seed S]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medti.cliutils import add_common, add_pipeline, csv_list, params_folder, pick, pipeline_mode
from medti.config import check_section, schema_default
from medti.config import modality as modality_of
from medti.errors import ConfigError
from medti.phantoms.kinds import KINDS

FLAGS = {"subjects_per_class": "--subjects-per-class", "seed": "--seed"}


def add_parser(sub) -> None:
    p = sub.add_parser("phantoms", help="generate the embedded default data set: labelled phantom DICOMs",
                       description="Write seeded phantom images of one kind as DICOM with fake patient data, plus "
                                   "labels.csv. Kinds: " + ", ".join(KINDS) + ".")
    add_common(p)
    add_pipeline(p, what="the modality to write (its name is the kind unless --kind says otherwise)")
    p.add_argument("--kind", choices=KINDS, help="which phantoms to draw (standalone: required; pipeline mode: "
                                                  "default the modality's name)")
    p.add_argument("--out", metavar="DIR", help="output folder (pipeline default: <phantoms.out>/<modality>)")
    p.add_argument("--classes", metavar="A,B",
                   help="the two class names, healthy first (default: the modality's classes in pipeline mode, "
                        "else the kind's own)")
    p.add_argument("--subjects-per-class", type=int, metavar="N",
                   help=f"subjects per class (default: phantoms.subjects_per_class, "
                        f"{schema_default('phantoms.subjects_per_class')})")
    p.add_argument("--seed", type=int, metavar="S",
                   help=f"seed (default: phantoms.seed, {schema_default('phantoms.seed')})")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default 1; the files do not depend on it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from medti.phantoms import generate_phantoms

    ctx = pipeline_mode(args, "phantoms")
    classes = csv_list(args.classes)
    if ctx is None:
        if args.kind is None or args.out is None:
            raise ConfigError("medti phantoms: standalone needs --kind and --out (or pipeline mode: "
                              "--params P --modality M)")
        kind, out, settings = args.kind, Path(args.out), {}
    else:
        params, modality = ctx
        kind = args.kind or modality
        if kind not in KINDS:
            raise ConfigError(f"medti phantoms: modality '{modality}' is not a phantom kind ({', '.join(KINDS)}); "
                              "name one with --kind")
        settings = params["phantoms"]
        classes = classes or modality_of(params, modality)["classes"]
        out = Path(args.out) if args.out else params_folder(params, "phantoms.out") / modality
    values = {"subjects_per_class": pick(args.subjects_per_class, settings.get("subjects_per_class"),
                                         schema_default("phantoms.subjects_per_class")),
              "seed": pick(args.seed, settings.get("seed"), schema_default("phantoms.seed"))}
    check_section("phantoms", values, "medti phantoms", names=FLAGS)
    if args.workers < 1:
        raise ConfigError("medti phantoms: --workers must be at least 1")
    result = generate_phantoms(kind, out, classes=classes, workers=args.workers, **values)
    print(result.out)
    return 0
