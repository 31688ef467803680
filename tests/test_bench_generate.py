"""``medti bench generate``: each side measures in its own process, the report compares them, and the command
prints the table and writes the figures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from medti.bench.generate import _worker, bench_generate, machine, report
from medti.errors import ConfigError

RES = 32


def test_bench_sides_measure_and_report(tiny_model_dir):
    config = {"base_model": "tiny", "n": 2, "steps": 1, "guidance": 7.5, "scheduler": "ddim", "batch_size": 2,
              "resolution": RES, "device": "cpu", "precision": "auto", "threads": None}
    results = {side: _worker(side, config) for side in ("medti", "diffusers")}
    for r in results.values():
        assert r["images"] == 2 and r["images_per_s"] > 0 and r["peak_rss_mb"] > 100 and r["resolution"] == RES
    summary = {"config": config, "machine": machine(), "results": results,
               "speedup": results["medti"]["images_per_s"] / results["diffusers"]["images_per_s"]}
    text = report(summary)
    assert "medti Sampler (batch 2)" in text and "diffusers StableDiffusionPipeline" in text
    assert "speed-up:" in text and "target >= 2x" in text


@pytest.mark.slow
def test_bench_command_prints_both_sides_and_the_ratio(tmp_path):
    """The command as users run it: two worker processes, a printed table and the JSON figures."""
    proc = subprocess.run([sys.executable, "-m", "medti.cli", "bench", "generate", "--n", "2", "--steps", "2",
                           "--batch-size", "2", "--resolution", str(RES), "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "images/s" in proc.stdout and "speed-up:" in proc.stdout
    figures = json.loads((tmp_path / "b.json").read_text())
    assert set(figures["results"]) == {"medti", "diffusers"} and figures["speedup"] > 0


def test_bad_settings_name_their_flag():
    for settings, message in (({"steps": 0}, "--steps: 0 is less than the minimum of 1"),
                              ({"scheduler": "lms"}, "--scheduler: 'lms' is not one of"),
                              ({"n": 0}, "--n must be at least 1")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            bench_generate(**settings)
