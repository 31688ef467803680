"""``medti bench ingest``: files/s and peak memory of ingestion (``medti prepare``) on many small DICOMs.

Writes ``--files`` single-frame 16-bit DICOMs of ``--dicom-size`` pixels (a few per subject, a window in the
header, labels in a CSV keyed by path) into a temporary folder, then ingests them into ``--size`` px PNGs with
``--workers`` processes in a process of its own (the real ``medti prepare`` command), sampling the memory of
that process and its workers every 50 ms. Ingestion streams: each worker writes its PNGs as it goes and
returns metadata only, so peak memory stays flat as the number of files grows (compare ``--files 2500``
with ``--files 10000``).
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from medti.bench.system import machine
from medti.config import check_section, schema_default
from medti.errors import ConfigError, MedtiError

CLASSES = ["normal", "opacity"]


def bench_ingest(files: int = 10_000, dicom_size: int = 64, size: int = schema_default("prepare.size"),
                 per_subject: int = 4, workers: int | None = None, folder: str | os.PathLike | None = None,
                 keep: bool = False) -> dict:
    """Write ``files`` DICOMs of ``dicom_size`` pixels (``per_subject`` per subject) under ``folder`` (default:
    the system's temp), ingest them into ``size`` px PNGs with ``workers`` processes (default: all cores) and
    return the figures (``report`` prints them); ``keep`` keeps the data (its folder is the figures' ``kept``)."""
    if files < 6 * per_subject or dicom_size < 8 or per_subject < 1:
        raise ConfigError("--files must be at least 6 x --per-subject, --dicom-size at least 8, "
                          "--per-subject at least 1")
    check_section("prepare", {"size": size}, "medti bench ingest", names={"size": "--size"})
    workers = workers or os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="medti-bench-ingest-", dir=folder))
    try:
        start = time.perf_counter()
        write_bench_dicoms(work / "dicom", files, dicom_size, per_subject)
        write_seconds = time.perf_counter() - start
        config = {"input": str(work / "dicom"), "out": str(work / "prepared"), "workers": workers,
                  "out_size": size, "root": str(work), "files": files}
        load_before = os.getloadavg()[0]
        result = _run_ingestion(config)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"files": files, "dicom_size": dicom_size, "size": size, "per_subject": per_subject,
               "workers": workers, "write_seconds": write_seconds, "load_before": load_before, "machine": machine(),
               **result}
    if keep:
        summary["kept"] = str(work)
    return summary


# -- the input: many small DICOMs, written fast from one template ------------------------------------------------
def write_bench_dicoms(folder: Path, n: int, size: int, per_subject: int, seed: int = 0) -> None:
    """``n`` DICOM files ``s<subject>/i<k>.dcm`` and ``labels.csv`` (path, label) in ``folder``.

    pydicom encodes one template; each file is that template with its own pixels, SOPInstanceUID and
    PatientID patched in at fixed offsets (same lengths), so writing 10,000 files takes seconds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    template, offsets = _template(size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = (1200 + 900 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (size * size / 8))).astype(np.int32)
    rows = []
    for i in range(n):
        subject = i // per_subject
        rel = f"s{subject:06d}/i{i % per_subject}.dcm"
        pixels = np.clip(base + rng.integers(-300, 300, (size, size)), 0, 4095).astype("<u2")
        data = bytearray(template)
        data[offsets["pixels"]:] = pixels.tobytes()
        data[offsets["uid"]:offsets["uid"] + 43] = f"2.25.1{i:037d}".encode()
        data[offsets["patient"]:offsets["patient"] + 13] = f"BENCH{subject:08d}".encode()
        path = folder / rel
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        rows.append(f"{rel},{CLASSES[subject % 2]}\n")
    (folder / "labels.csv").write_text("path,label\n" + "".join(rows), encoding="utf-8")


def _template(size: int) -> tuple[bytes, dict[str, int]]:
    uid, patient = "2.25.1" + "0" * 37, "BENCH" + "0" * 8
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = "2.25.7"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, uid
    ds.Modality, ds.PatientID, ds.PatientName = "DX", patient, "Bench^Patient"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.8", "2.25.9"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "1800", "2400"
    ds.PixelData = np.zeros((size, size), "<u2").tobytes()
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    data = buffer.getvalue()
    offsets = {"pixels": len(data) - size * size * 2, "uid": data.rindex(uid.encode()),
               "patient": data.index(patient.encode())}
    return data, offsets


# -- the ingestion: the real command, watched from outside ---------------------------------------------------
def _run_ingestion(config: dict) -> dict:
    """Run ``medti prepare`` (standalone form) on the benchmark folder as its own process, sampling the memory
    of that process and its workers, and timing it (wall clock and CPU time of the whole process tree)."""
    folder = Path(config["input"])
    cmd = [sys.executable, "-m", "medti.cli", "prepare", "-q", "--source-type", "dicom", "--input", str(folder),
           "--labels", str(folder / "labels.csv"), "--label-key", "path", "--classes", ",".join(CLASSES),
           "--out", config["out"], "--workers", str(config["workers"]), "--size", str(config["out_size"]),
           "--split", "0.5,0.25,0.25", "--ti-per-class", "100"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # nothing to track here
    env["MEDTI_PROJECT_ROOT"] = config["root"]  # the salt of this throw-away data set lives with it
    startup, startup_rss_mb = _startup(env)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    sampler = MemorySampler(psutil.Process(proc.pid))
    sampler.start()
    returncode = proc.wait()
    seconds = time.perf_counter() - start
    memory = sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers, all waited for
    if returncode != 0:
        raise MedtiError(f"bench ingest: medti prepare failed (exit status {returncode}); see its error above")
    summary = json.loads((Path(config["out"]) / "summary.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "startup_seconds": startup, "startup_rss_mb": startup_rss_mb,
            "images": summary["images_total"],
            "rejected": summary["rejected"], "files_per_s": config["files"] / seconds,
            "files_per_s_after_startup": config["files"] / max(seconds - startup, 1e-9),
            "cpu_ms_per_file": 1000 * cpu / config["files"], **memory}


def _startup(env: dict) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of ``medti prepare`` starting (imports, logging set-up) and stopping: a run
    that fails at once for a missing option. Run before any other child, so RUSAGE_CHILDREN's peak is its."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medti.cli", "prepare", "-q"], env=env, capture_output=True)
    seconds = time.perf_counter() - start
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


class MemorySampler(threading.Thread):
    """Peak memory of a process and its children, sampled every ``interval`` seconds: the largest RSS of the
    process and of any one child, and the peak over time of their summed RSS and summed PSS (PSS splits the
    pages forked workers share among them, so its sum is the real footprint; summed RSS counts them again)."""

    def __init__(self, root, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak = {"rss_main_mb": 0.0, "rss_worker_mb": 0.0, "rss_sum_mb": 0.0, "pss_sum_mb": 0.0}
        self.workers_seen = 0
        self._done = threading.Event()

    def sample(self) -> None:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        self.workers_seen = max(self.workers_seen, len(children))
        rss, pss = [], []
        for proc in [self.root, *children]:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss.append(info.rss / 2**20)
            pss.append(getattr(info, "pss", info.rss) / 2**20)
        if not rss:
            return
        peak = self.peak
        peak["rss_main_mb"] = max(peak["rss_main_mb"], rss[0])
        peak["rss_worker_mb"] = max([peak["rss_worker_mb"], *rss[1:]])
        peak["rss_sum_mb"] = max(peak["rss_sum_mb"], sum(rss))
        peak["pss_sum_mb"] = max(peak["pss_sum_mb"], sum(pss))

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> dict:
        self._done.set()
        self.join()
        return dict(self.peak, workers_seen=self.workers_seen)


def report(s: dict) -> str:
    m = s["machine"]
    return "\n".join([
        f"ingestion benchmark: {s['files']} DICOM files of {s['dicom_size']}x{s['dicom_size']} px "
        f"({s['per_subject']} per subject), medti prepare with {s['workers']} workers into {s['size']} px PNGs",
        f"machine: {m['cpu']} ({m['cores']} CPU cores); load average {s['load_before']:.1f} before the run",
        f"written in {s['write_seconds']:.1f} s; medti prepare took {s['seconds']:.1f} s: "
        f"{s['files_per_s']:.0f} files/s "
        f"({s['images']} images, {s['rejected']} rejected); without its {s['startup_seconds']:.1f} s start-up "
        f"{s['files_per_s_after_startup']:.0f} files/s; CPU time (all processes) "
        f"{s['cpu_ms_per_file']:.1f} ms per file",
        f"peak memory: main process {s['rss_main_mb']:.0f} MB RSS (start-up alone: {s['startup_rss_mb']:.0f} MB), "
        f"largest worker {s['rss_worker_mb']:.0f} MB RSS; "
        f"all {1 + s['workers_seen']} processes together {s['pss_sum_mb']:.0f} MB PSS "
        f"({s['rss_sum_mb']:.0f} MB summed RSS, counting shared pages once per process)",
    ] + ([f"kept: {s['kept']}"] if s.get("kept") else []))
