"""Shared fixtures: an isolated medti cache, the tiny base model, phantoms, MedMNIST, GPU gating."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MEDMNIST_DIR = ROOT.parent / "shared" / "data" / "medmnist"


def pytest_configure(config):
    # One cache for the whole session (the tiny model is built once), never the user's ~/.cache.
    cache = Path(os.environ.get("MEDTI_TEST_CACHE", ROOT / ".pytest_cache" / "medti"))
    os.environ["MEDTI_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Idle OpenMP threads sleep instead of spinning: on a CPU shared by several processes, spinning
    # threads made a tiny-model UNet call up to 100x slower (torch is imported after this point).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("MEDTI_TRACKING", "0")  # tests that exercise MLflow turn it on themselves
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    config.medti_timings = []  # wall-clock figures tests report (not assert), printed in the summary


def pytest_terminal_summary(terminalreporter, config):
    if getattr(config, "medti_timings", None):
        terminalreporter.section("medti timings (reported, not asserted)")
        for line in config.medti_timings:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The offline tiny SD pipeline folder (built once per session)."""
    from medti.models.loading import tiny_model_path

    return tiny_model_path("tiny")


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    if not MEDMNIST_DIR.is_dir():
        pytest.skip(f"real MedMNIST files not found at {MEDMNIST_DIR} (the shared data folder is absent)")
    return MEDMNIST_DIR


@pytest.fixture
def tracking_env(tmp_path, monkeypatch):
    """A real MLflow SQLite store in a temporary folder, for tests that check what is tracked."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MEDTI_TRACKING", raising=False)
    return uri
