"""Resuming an interrupted ``medti prepare``: what each input gave is journaled as it arrives.

A large ingestion (tens of thousands of DICOMs on a network share) must not start over because a job was
killed or failed near its end. Beside the output, ``.<name>.resume/`` holds the staged PNGs and
``journal.jsonl``: a header with the run's fingerprint (every setting that shapes a result, the labels file's
checksum, the salt), then one line per finished input: a salted key of the item, a stamp of its files (size
and modification time) and its records and rejects. A rerun with the same fingerprint replays the inputs
whose files are unchanged and whose staged PNGs are all there, and processes only the rest; a different
fingerprint starts afresh. Inputs that failed with an unexpected error (a flaky share, say) are not journaled,
so a rerun tries them again. The folder is removed once the output is in place; a lock keeps two runs from
writing the same output at once.

No header value and no input name is written: keys and stamps are salted hashes, and records and rejects name
their inputs by position in the item's list of inputs (which the rerun lists again from the source), never
by path. A write that fails (disk full, say) stops the run; what the journal holds then is still good.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from medti.deid import safe_text
from medti.errors import InputError
from medti.hashing import file_sha256, keyed_digest
from medti.preprocess.records import ImageRecord, Reject

log = logging.getLogger("medti.prepare")

FORMAT = 2  # 2: inputs by position, never by path
JOURNAL, LOCK = "journal.jsonl", "lock"


def resume_folder(out: Path) -> Path:
    return out.parent / f".{out.name}.resume"


def file_checksum(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return file_sha256(path)


class PrepareJournal:
    """The journal of one ``prepare`` output. ``done`` maps item keys to their (records, rejects, stamp)."""

    def __init__(self, out: Path, fingerprint: dict, salt: bytes):
        self.out = out
        self.folder = resume_folder(out)
        self._salt = salt
        self.fingerprint = self._hash(json.dumps(fingerprint, sort_keys=True, default=str))
        # per fingerprint: a PNG a killed run's orphaned worker writes late never lands in another run's staging
        self.staging = self.folder / f"staging-{self.fingerprint[:12]}"
        self.done: dict[str, tuple[list[dict], list[dict], str]] = {}  # as written: inputs by position
        self._fh = None
        self._lock = None
        self.added = 0
        self._added_staged: list[list[str]] = []  # staged files of the items journaled by this run

    def _hash(self, text: str) -> str:
        return keyed_digest(self._salt, safe_text(f"prepare-journal\0{text}"))

    def item_key(self, item) -> str:
        return self._hash(json.dumps(item, default=str))

    def stamp(self, root: Path, files: list[str]) -> str:
        """Size and modification time of an item's files ('file#index' names one file)."""
        parts = []
        for name in sorted({p.split("#", 1)[0] for p in files}):
            try:
                st = (root / name).stat()
                parts.append(f"{safe_text(name)}\0{st.st_size}\0{st.st_mtime_ns}")
            except OSError:
                parts.append(f"{safe_text(name)}\0missing")
        return self._hash("\n".join(parts))

    def open(self) -> int:
        """Lock the folder, load what an earlier run of the same settings finished (or start afresh); returns
        how many items are done."""
        from medti.atomic import try_lock

        self._lock = try_lock(self.folder / LOCK)
        if self._lock is None:
            raise InputError(f"{self.out}: another medti prepare is writing this output now")
        journal = self.folder / JOURNAL
        entries = self._read(journal)
        if entries is None:
            for p in self.folder.iterdir():  # another fingerprint's journal and staging
                if p.name != LOCK:
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
            self.staging.mkdir()
            header = {"medti_prepare_journal": FORMAT, "fingerprint": self.fingerprint}
            journal.write_text(json.dumps(header) + "\n", encoding="utf-8")
        else:
            self.staging.mkdir(exist_ok=True)
            for entry in entries:
                if all((self.staging / r["staged"]).is_file() for r in entry["records"]):
                    self.done[entry["key"]] = (entry["records"], entry["rejects"], entry["stamp"])
        self._fh = open(journal, "a", encoding="utf-8")
        return len(self.done)

    def _read(self, journal: Path) -> list[dict] | None:
        """The entries of a journal written with this fingerprint, or None (no journal, other settings). A line
        cut short by a kill is dropped from the file, so that the next entry starts on a line of its own."""
        try:
            data = journal.read_bytes()
            header = json.loads(data[:data.index(b"\n")])
        except (OSError, ValueError):
            return None
        if header.get("medti_prepare_journal") != FORMAT or header.get("fingerprint") != self.fingerprint:
            log.info("prepare: the settings changed since the interrupted run; starting afresh")
            return None
        complete = data[:data.rindex(b"\n") + 1]
        if len(complete) < len(data):
            with open(journal, "r+b") as fh:
                fh.truncate(len(complete))
        return [json.loads(line) for line in complete.decode("utf-8").splitlines()[1:]]

    def replay(self, key: str, stamp: str, inputs: list[str]) -> tuple[list[ImageRecord], list[Reject]] | None:
        """What the item gave in the interrupted run, if its files have not changed since (``inputs``: the
        item's input paths, which the journal names by position)."""
        done = self.done.get(key)
        if done is None or done[2] != stamp:
            return None
        try:
            records = [ImageRecord(**{**r, "inputs": tuple(inputs[i] for i in r["inputs"])}) for r in done[0]]
            rejects = [Reject(**{**r, "path": inputs[r["path"]]}) for r in done[1]]
        except (IndexError, TypeError, KeyError):
            return None  # the item lists other inputs now: process it again
        return records, rejects

    def add(self, key: str, stamp: str, records: list[ImageRecord], rejects: list[Reject],
            inputs: list[str]) -> None:
        """Journal what an item gave; paths are written as positions in ``inputs`` (the item's input paths).
        An item naming a path outside ``inputs`` is not journaled (a rerun processes it again)."""
        position = {p: i for i, p in enumerate(inputs)}
        if any(p not in position for r in records for p in r.inputs) or any(r.path not in position for r in rejects):
            return
        entry = {"key": key, "stamp": stamp,
                 "records": [{**asdict(r), "inputs": [position[p] for p in r.inputs]} for r in records],
                 "rejects": [{**asdict(r), "path": position[r.path]} for r in rejects]}
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()  # in the OS's hands: a killed process loses nothing written so far
        self.added += 1
        self._added_staged.append([r.staged for r in records])

    def close(self) -> None:
        """Stop writing (the lock is kept until ``remove`` or ``keep``). A flush that fails (disk full) loses
        at most the last line, which a rerun drops as cut short."""
        if self._fh is not None:
            fh, self._fh = self._fh, None
            try:
                fh.close()
            except OSError:
                pass

    def kept(self) -> int:
        """How many items a rerun can replay: journaled (this run or before) with every staged image there."""
        if not (self.folder / JOURNAL).is_file():
            return 0
        staged = [[r["staged"] for r in records] for records, _, _ in self.done.values()] + self._added_staged
        return sum(all((self.staging / name).is_file() for name in names) for names in staged)

    def keep(self) -> int:
        """After a failed run: the journal stays for a rerun if it holds any progress, and the lock goes.
        Returns how many inputs a rerun will not redo (counted on disk, not promised)."""
        self.close()
        kept = 0
        if self._lock is not None:
            kept = self.kept()
            self._lock.release()
            self._lock = None
            if kept:
                log.info("prepare: %d inputs done so far are kept in %s; the same command resumes from them",
                         kept, self.folder)
            else:
                shutil.rmtree(self.folder, ignore_errors=True)
        return kept

    def remove(self) -> None:
        """After a finished run: the journal and staging go."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            self._lock.release()
            self._lock = None
