"""``medti reader-study make`` and ``medti reader-study score``: blinded studies for expert readers
(what they do: ``help(medti.reader_study)``).

make, pipeline mode: ``--params P --modality M``: the real images are the test split of
``<prepare.out>/M/manifest.csv``, the synthetic ones ``<generate.out>/M/<variant>/manifest.csv`` (``--variant``,
default the main one); ``--compare full,few`` compares two variants (or ``NAME=PATH`` sets, such as another
generator's images). Standalone: ``--real`` and ``--synthetic`` (a manifest, or a folder of class
sub-folders), ``--compare NAME=PATH,NAME=PATH``. The study goes to ``--out``, its key to ``--key`` (default
``<out>-key``, beside it).

score: ``--key KEY --out DIR ANSWERS...`` (answers files, or folders of them); in pipeline mode also to MLflow.
"""

from __future__ import annotations

import argparse

from medti.cliutils import add_common, add_pipeline, csv_list, pipeline_mode
from medti.errors import ConfigError

TASK_NAMES = "real-or-synthetic, which-class, which-better"


def add_parser(sub) -> None:
    p = sub.add_parser("reader-study", help="blinded reader studies for experts: make the page, score the answers",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rsub = p.add_subparsers(dest="reader_study_command", metavar="<action>", required=True)

    m = rsub.add_parser("make", help="a study folder with one offline page for the readers, and its key apart",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(m)
    add_pipeline(m, what="the modality whose prepared and synthetic images to show")
    io = m.add_argument_group("images, study and key")
    io.add_argument("--real", metavar="PATH", help="real images: a manifest (its --split rows) or a folder "
                                                   "DIR/<class>/*.png (pipeline mode: the prepared manifest)")
    io.add_argument("--synthetic", metavar="PATH", help="synthetic images: a manifest or a folder DIR/<class>/*.png "
                                                        "(pipeline mode: the variant's synthetic set)")
    io.add_argument("--variant", metavar="V", help="pipeline mode: the synthetic variant shown (default: the main one)")
    io.add_argument("--compare", metavar="A,B",
                    help="which-better's two image sets: two variants (pipeline mode) or NAME=PATH,NAME=PATH")
    io.add_argument("--out", metavar="DIR", help="the study folder (study.html, images/, study.json)")
    io.add_argument("--key", metavar="DIR", help="the answer key's folder, kept from the readers (default: <out>-key)")
    s = m.add_argument_group("the study")
    s.add_argument("--readers", metavar="A,B", help="the readers' names, comma-separated (each gets an own order)")
    s.add_argument("--tasks", metavar="T,T", help=f"tasks among {TASK_NAMES} (default: every one the images allow)")
    s.add_argument("--cases-per-class", metavar="N",
                   help="cases per class and task: N, or per task as TASK=N,TASK=N (default 10; real-or-synthetic "
                        "and which-class show N real and N synthetic images per class, which-better N pairs)")
    s.add_argument("--repeats", metavar="N",
                   help="cases per task shown twice, for consistency: N or TASK=N,... (default: 10 %% of a task)")
    s.add_argument("--classes", metavar="A,B", help="the classes (default: those every image set has)")
    s.add_argument("--split", metavar="S", help="the real manifest's split to draw from (default: test)")
    s.add_argument("--seed", type=int, help="the draw and the orders (default: params.yaml's seed, else 0)")
    s.add_argument("--size", type=int, metavar="PX",
                   help="longest side of every image in pixels (default: their own when they share one)")
    s.add_argument("--title", metavar="TEXT", help="the study's title on the page")
    m.set_defaults(func=run_make)

    c = rsub.add_parser("score", help="score the readers' answer files with the key: accuracy, sensitivity, "
                                      "preference, kappa, consistency",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(c)
    add_pipeline(c, what="the modality studied (pipeline mode: tracked in MLflow with params.yaml's settings)")
    c.add_argument("answers", nargs="*", metavar="ANSWERS", help="answers files exported by the page, or folders")
    c.add_argument("--key", metavar="DIR", help="the study's key folder (or its key.json)")
    c.add_argument("--out", metavar="DIR", help="the results folder (summary.md/.html, figures, metrics.json)")
    c.add_argument("--allow-incomplete", action="store_true",
                   help="score readers who left images unanswered (default: an error)")
    c.add_argument("--confidence", type=float, help="interval level (default 0.95)")
    c.add_argument("--bootstrap", type=int, help="bootstrap resamples for the kappa intervals (default 2000)")
    c.add_argument("--seed", type=int, help="the bootstrap's seed (default: the study's)")
    c.set_defaults(func=run_score)


def _require(args: argparse.Namespace, command: str, *flags: str) -> None:
    missing = [f for f in flags if getattr(args, f.lstrip("-").replace("-", "_")) in (None, [])]
    if missing:
        raise ConfigError(f"medti {command}: missing {', '.join(missing)}")


def run_make(args: argparse.Namespace) -> int:
    command = "reader-study make"
    pipeline = pipeline_mode(args, command)
    _require(args, command, "--out", "--readers")
    from medti.reader_study import make_from_params, make_study

    settings = {"readers": csv_list(args.readers), "tasks": csv_list(args.tasks),
                "cases_per_class": args.cases_per_class,
                "repeats": args.repeats, "classes": csv_list(args.classes),
                "split": args.split or "test", "size": args.size, "key": args.key}
    if pipeline is not None:
        params, modality = pipeline
        study = make_from_params(params, modality, args.out, variant=args.variant, compare=csv_list(args.compare),
                                 real=args.real, synthetic=args.synthetic, seed=args.seed, title=args.title,
                                 **settings)
    else:
        if args.variant:
            raise ConfigError(f"medti {command}: --variant names a pipeline variant (pipeline mode: --params P "
                              "--modality M); standalone, give the images with --synthetic")
        study = make_study(args.out, real=args.real, synthetic=args.synthetic, compare=csv_list(args.compare),
                           seed=args.seed if args.seed is not None else 0, title=args.title, **settings)
    print(f"study {study.study_id}: {study.page} ({sum(study.tasks.values())} images per reader; readers: "
          f"{', '.join(study.readers)})\nkey (keep it from the readers): {study.key}")
    return 0


def run_score(args: argparse.Namespace) -> int:
    command = "reader-study score"
    pipeline = pipeline_mode(args, command)
    _require(args, command, "--key", "--out")
    if not args.answers:
        raise ConfigError(f"medti {command}: name the answers files (or a folder of them)")
    from medti.reader_study import score_study

    params, modality = pipeline if pipeline is not None else (None, None)
    results = score_study(args.key, args.answers, args.out, allow_incomplete=args.allow_incomplete,
                          confidence=args.confidence if args.confidence is not None else 0.95,
                          bootstrap=args.bootstrap if args.bootstrap is not None else 2000, seed=args.seed,
                          params=params, modality=modality)
    print(f"study {results['study_id']} scored ({', '.join(results['readers'])}): {args.out}/summary.html")
    return 0
