"""Logging set-up shared by every command: one format, stderr plus an optional log file.

Log lines carry configuration values, counts and de-identified ids only; stage code never logs DICOM header
values (file names of DICOMs are logged by their position relative to the input root only where a user
must find a bad file).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_NOISY = ("diffusers", "transformers", "urllib3", "httpx", "filelock", "alembic", "git", "PIL", "matplotlib")


def setup_logging(log_file: str | os.PathLike | None = None, verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    # Where the caller already sends stderr to the log file (the Snakemake rules: `--log {log} 2> {log}`), each
    # record goes there once, through stderr, with the file's full timestamps.
    into_log = bool(log_file) and _is_stderr(log_file)
    handler.setFormatter(logging.Formatter(FORMAT) if into_log else logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    if log_file and not into_log:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fh = logging.FileHandler(log_file, mode="w", encoding="utf-8")
        fh.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(fh)
    root.setLevel(level)
    quiet_libraries()


def _is_stderr(path: str | os.PathLike) -> bool:
    """Whether this process's stderr is the file ``path`` (same device and inode)."""
    try:
        return os.path.samestat(os.fstat(sys.stderr.fileno()), os.stat(path))
    except (OSError, ValueError, AttributeError):  # no such file yet; stderr closed, replaced or not a real file
        return False


def quiet_libraries() -> None:
    """Silence the chatter of third-party libraries (load bars, torchvision and accelerate hints)."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    # The variables above take effect when these libraries are imported; set them directly only where they
    # are already loaded (importing them here would cost every command seconds it may not need).
    for name in ("transformers", "diffusers"):
        module = sys.modules.get(name)
        if module is not None:
            module.utils.logging.set_verbosity_error()
            module.utils.logging.disable_progress_bar()


def progress(iterable=None, **kwargs):
    """A tqdm progress bar on stderr; hidden when stderr is not a terminal unless MEDTI_PROGRESS=1."""
    from tqdm.auto import tqdm

    force = os.environ.get("MEDTI_PROGRESS")
    disable = (force == "0") if force is not None else (not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=disable, file=sys.stderr, **kwargs)
