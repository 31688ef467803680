"""Atomic outputs: a file or folder appears complete or not at all, and has one writer at a time.

Everything is first written next to its final place (same filesystem, so the rename is atomic) under a
hidden temporary name, then renamed. On an exception the temporary is removed, so a failed or killed run
leaves no half-written output where a workflow manager would take it for a finished one.

One writer per output: :func:`output_lock` (taken by :func:`atomic_dir` for the folder it writes, and by
``medti generate``/``interpolate``/``inpaint`` for their whole run) holds an exclusive lock on
``<parent>/.<name>.lock``, beside the output and never inside it (a workflow manager deletes an incomplete
output folder; the lock must not go with it). A second process writing the same output stops at once with
one line naming the folder. The lock is the kernel's (``flock``): a killed holder releases it, and the file
left behind is reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary file path; on success it is fsynced and renamed onto ``path``.

    The temporary keeps ``path``'s suffix so that writers choosing a format by extension still work.
    ``fsync=False`` for many small files on a hot path (staged images): still whole or absent after a killed
    process, though not after a power cut.
    """
    path = Path(path)
    tmp = _tmp_sibling(path, suffix=path.suffix)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; outputs are shared like any other
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, lock: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces ``path`` whole. ``lock``: hold
    :func:`output_lock` on ``path`` meanwhile (a second writer of the same folder stops at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(path) if lock else contextlib.nullcontext():
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            yield tmp
            replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def replace_dir(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put the folder ``src`` (on ``path``'s filesystem) in the place of ``path``, replacing what is there. Between
    the two renames ``path`` is absent, never partial; the old folder is removed after."""
    src, path = Path(src), Path(path)
    if path.exists() or path.is_symlink():
        old = path.parent / f".{path.name}.{os.getpid()}.{src.name[-12:]}.old"
        os.replace(path, old)
        os.replace(src, path)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(src, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)


def sweep_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> int:
    """Remove temporaries left in ``folder`` by a killed run (SIGKILL skips the cleanup above).

    ``name``: only those of the output ``folder/name``, so that a job does not remove the temporaries that a
    parallel job writing a sibling output (another seed, another modality) is filling right now.
    """
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    prefix = f".{name}." if name is not None else "."
    for p in folder.iterdir():
        if p.name.startswith(prefix) and (p.name.endswith(".tmp") or ".tmp." in p.name or p.name.endswith(".old")):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


def try_lock(path: str | os.PathLike):
    """An exclusive ``filelock.FileLock`` on ``path`` (created with its folder), or None when another process
    holds it. Release it with ``.release()``."""
    from filelock import FileLock, Timeout

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return None
    return lock


# -- one writer per output -------------------------------------------------------------------------------------
_HELD: dict[str, list] = {}  # lock file -> [fd, depth]: this process's locks (re-entered, not re-taken)


def lock_file(output: str | os.PathLike) -> Path:
    """The lock file of an output: ``<parent>/.<name>.lock``, beside it."""
    output = Path(os.path.abspath(output))
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, *, shared: bool = False, wait: float = 0.0,
                what: str = "writing this output") -> Iterator[Path]:
    """Hold the lock of ``output`` (a file or folder, existing or not) for the block; yield the lock file.

    Exclusive by default; ``shared`` locks coexist with each other but not with an exclusive one (shards of one
    set write the same folder side by side; a run that replaces the whole folder excludes them). Another holder
    makes this raise :class:`~medti.errors.InputError` at once, naming ``output`` (after ``wait`` seconds of
    retrying, when given). Re-entering a lock this process holds is a no-op (a stage's :func:`atomic_dir` inside
    the lock of its whole run).
    """
    path = lock_file(output)
    held = _HELD.get(str(path))
    if held is not None:
        held[1] += 1
        try:
            yield path
        finally:
            held[1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(0.0, float(wait))
    started = time.monotonic()
    while (fd := _acquire(path, shared)) is None:
        # a holder that is gone may leave the lock for a moment to its forked workers, which die with it
        orphaned = _holder_gone(path) and time.monotonic() - started < ORPHAN_GRACE_S
        if time.monotonic() >= deadline and not orphaned:
            from medti.errors import InputError

            holder = _holder(path)
            raise InputError(f"{output}: another medti process{holder} is {what} now (lock {path.name} beside it); "
                             "wait for it to finish, or choose another output")
        time.sleep(0.05)
    _HELD[str(path)] = [fd, 1]
    try:
        yield path
    finally:
        del _HELD[str(path)]
        _release(path, fd, shared)


def _acquire(path: Path, shared: bool):
    """An open, locked descriptor of ``path``, or None when another process holds it."""
    if fcntl is None:  # no flock (Windows): filelock's exclusive lock for both kinds
        lock = try_lock(path)
        return lock
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        try:  # a holder may have removed the file (releasing it) between our open and flock: lock the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if not shared:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _release(path: Path, fd, shared: bool) -> None:
    if fcntl is None:
        fd.release()
        return
    try:
        if shared:  # the last holder removes the file; the others leave it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)


ORPHAN_GRACE_S = 10.0


def _holder_gone(path: Path) -> bool:
    """The pid written in the lock file names no live process (it was killed; its workers may still hold on)."""
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


# -- staging folders for jobs that resume -----------------------------------------------------------------------
PARTIAL = ".medti-partial"


def staging_dir(out: str | os.PathLike) -> Path:
    """Where a resumable job builds the folder ``out`` until it is complete: ``<parent>/.medti-partial/<name>``,
    beside ``out`` (outside what a workflow manager deletes) and on its filesystem (it moves in by rename)."""
    out = Path(os.path.abspath(out))
    return out.parent / PARTIAL / out.name


def open_staging(stage: Path, what: str) -> Path:
    """Make the staging folder ``stage`` (a :func:`staging_dir`), with a .gitignore in ``.medti-partial`` saying
    what it holds; returns ``stage``."""
    for attempt in range(3):  # a sibling job may remove an empty .medti-partial meanwhile
        try:
            stage.mkdir(parents=True, exist_ok=True)
            break
        except FileNotFoundError:
            if attempt == 2:
                raise
    if not (stage.parent / ".gitignore").is_file():
        write_text(stage.parent / ".gitignore", f"# medti: {what} (resume state)\n*\n")
    return stage


def tidy_staging(partial: Path) -> None:
    """Remove ``.medti-partial`` when no other job is staging in it."""
    try:
        rest = [p for p in partial.iterdir() if p.name != ".gitignore"]
    except FileNotFoundError:
        return
    if not rest:
        (partial / ".gitignore").unlink(missing_ok=True)
        try:
            partial.rmdir()
        except OSError:
            pass
