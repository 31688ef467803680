"""``medti bench`` as a whole: its help loads nothing heavy, its flags are the stage commands' flags, and no
stage depends on it (production code measures memory through medti.resources)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from medti.cli import build_parser
from medti.config import schema_default
from medti.resources import peak_rss_mb

PACKAGE = Path(__file__).resolve().parents[1] / "medti"
HEAVY = ("torch", "diffusers", "numpy", "pandas", "PIL", "pydicom", "scipy", "mlflow", "psutil", "dvc")


@pytest.mark.parametrize("argv", [["bench"], ["bench", "ingest"], ["bench", "train"], ["bench", "generate"],
                                  ["phantoms"], ["workflow", "check"], ["workflow", "restore-mtimes"]])
def test_help_imports_nothing_heavy(argv):
    code = (f"import sys\nfrom medti.cli import main\ntry:\n    main({[*argv, '--help']!r})\nexcept SystemExit:\n"
            f"    pass\nprint([m for m in {HEAVY!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: medti" in proc.stdout and proc.stdout.splitlines()[-1] == "[]"


def test_no_stage_imports_the_benchmarks():
    importers = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
                 if p.parent.name != "bench" and re.search(r"^\s*(from|import) medti\.bench\b", p.read_text(), re.M)]
    assert importers == []


def test_a_setting_has_the_stage_commands_flag_and_the_schema_default():
    parse = build_parser().parse_args
    train = parse(["bench", "train"])
    assert (train.batch_size, train.num_vectors, train.compile_memory_budget) == (
        schema_default("train_embedding.batch_size"), schema_default("train_embedding.num_vectors"),
        schema_default("train_embedding.compile_memory_budget"))
    assert train.baseline and not train.compile and not train.gradient_checkpointing and train.num_images == 16
    train = parse(["bench", "train", "--no-baseline", "--compile", "--gradient-checkpointing", "--num-images", "4"])
    assert not train.baseline and train.compile and train.gradient_checkpointing and train.num_images == 4
    assert not parse(["bench", "train", "--compile", "--no-compile"]).compile
    generate = parse(["bench", "generate"])
    assert (generate.steps, generate.scheduler) == (schema_default("generate.steps"),
                                                     schema_default("generate.scheduler"))
    ingest = parse(["bench", "ingest", "--dicom-size", "32"])
    assert (ingest.size, ingest.dicom_size) == (schema_default("prepare.size"), 32)


def test_peak_rss_is_this_process_memory():
    assert 10 < peak_rss_mb() < 1e6
