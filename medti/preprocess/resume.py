"""Resuming an interrupted ``medti prepare``: what each input gave is journaled as it arrives.

A large ingestion (tens of thousands of DICOMs on a network share) must not start over because a job was
killed. Beside the output, ``.<name>.resume/`` holds the staged PNGs and ``journal.jsonl``: a header with the
run's fingerprint (every setting that shapes a result, the labels file's checksum, the salt), then one line
per finished input: a salted key of the item, a stamp of its files (size and modification time) and its
records and rejects. A rerun with the same fingerprint replays the inputs whose files are unchanged and whose
staged PNGs are all there, and processes only the rest; a different fingerprint starts afresh. The folder is
removed once the output is in place, and after a reported failure (bad input, ``on_error: fail``), which leaves
nothing behind; a killed or crashed run keeps it.

No header value and no unredacted path is written: keys and stamps are salted hashes, and records and rejects
hold what the output itself will hold (salted ids, redacted input paths).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from medti.preprocess.records import ImageRecord, Reject

log = logging.getLogger("medti.prepare")

FORMAT = 1


def resume_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.resume"


def file_checksum(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


class PrepareJournal:
    """The journal of one ``prepare`` output. ``done`` maps item keys to their (records, rejects, stamp)."""

    def __init__(self, out: Path, fingerprint: dict, salt: bytes):
        self.folder = resume_folder(out)
        self.staging = self.folder / "staging"
        self._salt = salt
        self.fingerprint = self._hash(json.dumps(fingerprint, sort_keys=True, default=str))
        self.done: dict[str, tuple[list[ImageRecord], list[Reject], str]] = {}
        self._fh = None

    def _hash(self, text: str) -> str:
        return hmac.new(self._salt, f"prepare-journal\0{text}".encode("utf-8"), hashlib.sha256).hexdigest()

    def item_key(self, item) -> str:
        return self._hash(json.dumps(item, default=str))

    def stamp(self, root: Path, inputs: list[str]) -> str:
        """Size and modification time of the files behind an item's inputs ('file#index' names one file)."""
        parts = []
        for name in sorted({p.split("#", 1)[0] for p in inputs}):
            try:
                st = (root / name).stat()
                parts.append(f"{name}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{name}\0missing")
        return self._hash("\n".join(parts))

    def open(self) -> int:
        """Load what an earlier run of the same settings finished (or start afresh); returns how many items."""
        journal = self.folder / "journal.jsonl"
        entries = self._read(journal)
        if entries is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.staging.mkdir(parents=True)
            header = {"medti_prepare_journal": FORMAT, "fingerprint": self.fingerprint}
            journal.write_text(json.dumps(header) + "\n", encoding="utf-8")
        else:
            self.staging.mkdir(parents=True, exist_ok=True)
            for entry in entries:
                records = [ImageRecord(**{**r, "inputs": tuple(r["inputs"])}) for r in entry["records"]]
                if all((self.staging / r.staged).is_file() for r in records):
                    self.done[entry["key"]] = (records, [Reject(**r) for r in entry["rejects"]], entry["stamp"])
        self._fh = open(journal, "a", encoding="utf-8")
        return len(self.done)

    def _read(self, journal: Path) -> list[dict] | None:
        """The entries of a journal written with this fingerprint, or None (no journal, other settings)."""
        try:
            lines = journal.read_text(encoding="utf-8").splitlines()
            header = json.loads(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if header.get("medti_prepare_journal") != FORMAT or header.get("fingerprint") != self.fingerprint:
            log.info("prepare: the settings changed since the interrupted run; starting afresh")
            return None
        entries = []
        for line in lines[1:]:
            try:
                entries.append(json.loads(line))
            except ValueError:  # the line being written when the run was killed
                break
        return entries

    def replay(self, key: str, stamp: str) -> tuple[list[ImageRecord], list[Reject]] | None:
        """What the item gave in the interrupted run, if its files have not changed since."""
        done = self.done.get(key)
        if done is None or done[2] != stamp:
            return None
        return done[0], done[1]

    def add(self, key: str, stamp: str, records: list[ImageRecord], rejects: list[Reject]) -> None:
        entry = {"key": key, "stamp": stamp, "records": [asdict(r) for r in records],
                 "rejects": [asdict(r) for r in rejects]}
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()  # in the OS's hands: a killed process loses nothing written so far

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
