"""``medti report``: one self-contained HTML page (and the same in Markdown) of a pipeline run
(what it shows: ``help(medti.report)``).

Pipeline mode: ``--params params.yaml`` (every modality of it, or ``--modalities``): the inputs and the output
default to the params paths: ``--evaluate <evaluate.out>``, ``--prepared <prepare.out>``, ``--synthetic
<generate.out>``, ``--train-reports <train_embedding.reports>``, ``--interpolate <interpolate.out>``, ``--out
<report.out>``; the report shows params.yaml as it was.

Standalone: ``--evaluate DIR --prepared DIR --out DIR`` (``--synthetic``, ``--train-reports``,
``--interpolate`` optional); the modalities are the ``<evaluate>/<modality>/`` folders found, or
``--modalities``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medti.cliutils import add_common, add_pipeline, csv_list, load_params_arg, params_folder
from medti.config import check_section
from medti.errors import ConfigError

COMMAND = "report"
# flag dest -> the params.yaml section and key of its folder in pipeline mode
PIPELINE_PATHS = {"evaluate": ("evaluate", "out"), "prepared": ("prepare", "out"), "synthetic": ("generate", "out"),
                  "train_reports": ("train_embedding", "reports"), "interpolate": ("interpolate", "out"),
                  "out": ("report", "out")}


def add_parser(sub) -> None:
    p = sub.add_parser(COMMAND, help="one self-contained HTML (and Markdown) report of a pipeline run",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p)
    add_pipeline(p, modality=False)
    io = p.add_argument_group("inputs and outputs (pipeline mode: default from params.yaml's paths)")
    io.add_argument("--evaluate", metavar="DIR", help="medti evaluate's outputs, DIR/<modality>/")
    io.add_argument("--prepared", metavar="DIR", help="the prepared data, DIR/<modality>/manifest.csv")
    io.add_argument("--synthetic", metavar="DIR",
                    help="the synthetic data, DIR/<modality>/<variant>/manifest.csv (or DIR/<modality>/manifest.csv)")
    io.add_argument("--train-reports", metavar="DIR",
                    help="embedding training reports, DIR/<modality>/<class>/<variant>/ (or DIR/<modality>/<class>/)")
    io.add_argument("--interpolate", metavar="DIR", help="medti interpolate's figures, DIR/<modality>/*.png")
    io.add_argument("--out", metavar="DIR", help="the report folder")
    io.add_argument("--modalities", metavar="A,B",
                    help="comma-separated modalities (default: params.yaml's, else those evaluated)")
    s = p.add_argument_group("settings (default: params.yaml report, else the schema's defaults)")
    s.add_argument("--samples-per-class", type=int, help="real and synthetic images per class in the sample grids")
    p.set_defaults(func=run)



def pipeline_paths(params: dict) -> dict[str, Path]:
    """The folders pipeline mode reads and writes when the flags leave them open (params.yaml's paths)."""
    return {dest: params_folder(params, f"{section}.{key}") for dest, (section, key) in PIPELINE_PATHS.items()}


def run(args: argparse.Namespace) -> int:
    if args.samples_per_class is not None:
        check_section("report", {"samples_per_class": args.samples_per_class}, f"medti {COMMAND}",
                      names={"samples_per_class": "--samples-per-class"})
    params = load_params_arg(args)
    paths = {dest: getattr(args, dest) for dest in PIPELINE_PATHS}
    if params is not None:
        defaults = pipeline_paths(params)
        paths = {dest: value or defaults[dest] for dest, value in paths.items()}
    else:
        missing = [f"--{d}" for d in ("evaluate", "prepared", "out") if paths[d] is None]
        if missing:
            raise ConfigError(f"medti {COMMAND}: standalone needs {', '.join(missing)} (or pipeline mode: --params P)")
    from medti.report import build_report

    build_report(paths["evaluate"], paths["prepared"], paths["out"], synthetic_dir=paths["synthetic"],
                 train_reports_dir=paths["train_reports"], interpolate_dir=paths["interpolate"], params=params,
                 params_path=args.params, modalities=csv_list(args.modalities),
                 samples_per_class=args.samples_per_class)
    return 0
