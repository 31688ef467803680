"""A private one-node SLURM cluster for tests and for trying the SLURM profile: munge, MariaDB, slurmdbd, slurmctld
and slurmd from Debian's packages, configured in one state folder and torn down again.

Everything lives in the state folder: configuration, munge key and socket, the MariaDB data folder, spool, state,
logs and pid files. Ports are picked free at start, the munge socket and MariaDB socket are private, so the
cluster does not touch the machine's /etc/slurm, /etc/munge or system daemons, and a second copy can run beside
it. The daemons run as root (SlurmUser=root, as a test cluster may); the one node is this machine, with the CPUs
and memory `slurmd -C` detects and no GPUs (no gres), in the partitions `cpu` (default) and `gpu` that
workflow/profiles/slurm names. Accounting goes through slurmdbd into MariaDB, so `sacct` and `sacctmgr` answer as
on a real cluster; the account `medti` holds the user root.

Used by tests/test_slurm_cluster.py (the fixture) and by scripts/local-slurm-cluster.sh:

    python tests/slurm_support.py start DIR    # prints the `export SLURM_CONF=... PATH=...` lines to eval
    python tests/slurm_support.py stop DIR
    python tests/slurm_support.py profile-args workflow/profiles/slurm/config.yaml   # see profile_args

Clients find the cluster through SLURM_CONF. One thing needs more: snakemake-executor-plugin-slurm's job step
(snakemake-executor-plugin-slurm-jobstep) starts each job's `srun` with every SLURM_* variable removed but a few
job ids, SLURM_CONF included, so inside a job `srun` would look for /etc/slurm/slurm.conf. Rather than write that
system file, the cluster puts a two-line `srun` in DIR/bin, first on PATH, that sets SLURM_CONF again and runs
the real /usr/bin/srun. A real cluster has its slurm.conf at the default path (or runs configless) and needs none.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CLUSTER = "medti-local"
ACCOUNT = "medti"
PARTITIONS = ("cpu", "gpu")  # workflow/profiles/slurm: the default partition and the GPU rules' partition
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")  # start order; stopped in reverse
BINARIES = {
    "munged": "munged", "munge": "munge", "mariadbd": "mariadbd", "mariadb-install-db": "mariadb-install-db",
    "mariadb": "mariadb", "slurmdbd": "slurmdbd", "slurmctld": "slurmctld", "slurmd": "slurmd",
    "sbatch": "sbatch", "srun": "srun", "sacct": "sacct", "sacctmgr": "sacctmgr", "squeue": "squeue",
    "scancel": "scancel", "sinfo": "sinfo", "scontrol": "scontrol",
}
PACKAGES = "slurmctld slurmd slurmdbd slurm-client munge mariadb-server"  # as scripts/install-system-packages.sh


class ClusterError(RuntimeError):
    """The cluster could not be started (the message names the daemon and the tail of its log)."""


def unavailable() -> str | None:
    """Why a local cluster cannot run here (one line), or None."""
    if sys.platform != "linux":
        return "a local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root; not root here"
    missing = [name for name in BINARIES.values() if _which(name) is None]
    if missing:
        return (f"SLURM/munge/MariaDB not installed ({', '.join(missing)} missing; "
                f"scripts/install-system-packages.sh installs {PACKAGES})")
    return None


def _which(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: this process's environment) with the cluster's SLURM_CONF and the srun shim."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        for var in [v for v in env if v.startswith(("SLURM_JOB", "SBATCH_", "SRUN_"))]:
            env.pop(var)  # never inherit another allocation's settings
        return env

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        proc = subprocess.run(list(args), env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise ClusterError(f"{' '.join(args)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}")
        return proc

    def node_state(self) -> str:
        proc = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=20)
        return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""

    def jobs(self) -> list[dict]:
        """Every job sacct knows (allocations only, not steps): id, name, comment, partition, state, times."""
        fields = ["JobIDRaw", "JobName", "Comment", "Partition", "Account", "State", "ExitCode", "Submit", "Start",
                  "End", "AllocCPUS", "ReqMem"]
        proc = self.run("sacct", "-X", "-n", "-P", "-a", "--starttime", "2000-01-01",
                        "-o", ",".join(f"{f}%200" for f in fields))
        return [dict(zip(fields, line.split("|"), strict=False)) for line in proc.stdout.splitlines() if line.strip()]

    def queue(self) -> list[dict]:
        """squeue's view: id, state, comment of jobs not yet finished."""
        proc = self.run("squeue", "-h", "-o", "%i|%T|%k", check=False, timeout=20)
        rows = [line.split("|", 2) for line in proc.stdout.splitlines() if line.strip()]
        return [{"JobID": r[0], "State": r[1], "Comment": r[2] if len(r) > 2 else ""} for r in rows]


def profile_args(profile_file: Path, account: str = ACCOUNT, gpu_job_mem_mb: int = 4000) -> list[str]:
    """Snakemake options that restate a SLURM profile's default-resources and set-resources for this GPU-less
    cluster. Snakemake's command line replaces a profile's mapping whole (`--set-resources rule:gpu=0` alone would
    drop every other rule's partition), so both are given in full, read from the profile, with only this changed:
    the account this cluster enforces, and for the GPU rules no GPU, at most ``gpu_job_mem_mb`` of memory, and CPUs
    from the rule's `threads:` as for the other rules (the profile's 8 CPUs per GPU job are for a GPU node)."""
    import yaml

    profile = yaml.safe_load(Path(profile_file).read_text())
    default = {**(profile.get("default-resources") or {}), "slurm_account": account}
    args = ["--default-resources", *(f"{k}={v}" for k, v in default.items()), "--set-resources"]
    for rule, res in (profile.get("set-resources") or {}).items():
        res = dict(res or {})
        if res.get("gpu"):
            res.pop("cpus_per_task", None)
            res.update(gpu=0, mem_mb=min(int(res.get("mem_mb", gpu_job_mem_mb)), gpu_job_mem_mb))
        args += [f"{rule}:{k}={v}" for k, v in res.items()]
    return args


def _detect_node() -> str:
    """`slurmd -C`'s line for this machine (NodeName=<host> CPUs=... RealMemory=...), without UpTime."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), "")
    if not line:
        raise ClusterError(f"`slurmd -C` printed no node line: {out.strip()[:300]}")
    return line.strip()


def write_config(root: Path) -> Cluster:
    """The cluster's folders, munge key, slurm.conf, slurmdbd.conf, srun shim and ports (no daemon started)."""
    root = Path(root).resolve()
    for sub in ("etc", "bin", "munge", "munge-key", "mysql", "state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    # munged wants its socket's folders traversable by all and its key folder private
    for folder in (root, root / "munge", root / "etc", root / "bin"):
        folder.chmod(0o755)
    for folder in (root / "munge-key", root / "state", root / "mysql"):
        folder.chmod(0o700)
    key = root / "munge-key" / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
    ports = {name: _free_port() for name in ("mysql", "slurmdbd", "slurmctld", "slurmd")}
    node = _detect_node()
    nodename = node.split()[0].split("=", 1)[1]
    munge_socket = root / "munge" / "munge.socket"
    (root / "ports").write_text("".join(f"{k}={v}\n" for k, v in ports.items()))
    user = getpass.getuser()
    (root / "etc" / "plugstack.conf").write_text("")  # not Debian's /etc/slurm/plugstack.conf
    (root / "etc" / "slurm.conf").write_text(f"""\
# A one-node test cluster written by tests/slurm_support.py (no GPUs: partitions named as the profile's)
ClusterName={CLUSTER}
SlurmctldHost={nodename}(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}
SlurmdPidFile={root / 'run' / 'slurmd.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
PlugStackConfig={root / 'etc' / 'plugstack.conf'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={ports['slurmdbd']}
AccountingStoragePass={munge_socket}
AccountingStoreFlags=job_comment
AccountingStorageEnforce=associations
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=300
KillWait=5
SlurmctldDebug=info
SlurmdDebug=info
{node} State=UNKNOWN
PartitionName=cpu Nodes={nodename} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={nodename} MaxTime=INFINITE State=UP
""")
    dbd = root / "etc" / "slurmdbd.conf"
    dbd.write_text(f"""\
AuthType=auth/munge
AuthInfo=socket={munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports['slurmdbd']}
SlurmUser={user}
LogFile={root / 'log' / 'slurmdbd.log'}
PidFile={root / 'run' / 'slurmdbd.pid'}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports['mysql']}
StorageUser=slurm
StoragePass=slurm-test
StorageLoc=slurm_acct_db
""")
    dbd.chmod(0o600)  # slurmdbd refuses a world-readable file holding a password
    srun = root / "bin" / "srun"
    srun.write_text(f"#!/bin/sh\nSLURM_CONF={root / 'etc' / 'slurm.conf'} exec {_which('srun')} \"$@\"\n")
    srun.chmod(0o755)
    return Cluster(root)


def _ports(root: Path) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split("=") for ln in (root / "ports").read_text().split())}


def _tail(path: Path, n: int = 8) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return f"(no log at {path})"


def _wait(what: str, ok, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ok():
            return
        time.sleep(0.3)
    raise ClusterError(f"{what} did not come up within {timeout:.0f} s; its log: {_tail(log)}")


def _pidfile(root: Path, daemon: str) -> Path:
    return root / ("munge/munged.pid" if daemon == "munged" else f"run/{daemon}.pid")


def _alive(pid: int, daemon: str) -> bool:
    """Whether ``pid`` is a running ``daemon`` (a zombie is not; one that is our child is reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()[0]
    if state in ("Z", "X"):
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return comm == daemon[:15] or (daemon == "mariadbd" and comm in ("mariadbd", "mysqld"))


def _pid(root: Path, daemon: str) -> int | None:
    try:
        pid = int(_pidfile(root, daemon).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid, daemon) else None


def _start_munge(root: Path) -> None:
    sock = root / "munge" / "munge.socket"
    log = root / "munge-key" / "munged.log"
    subprocess.run([_which("munged"), f"--socket={sock}", f"--key-file={root / 'munge-key' / 'munge.key'}",
                    f"--pid-file={_pidfile(root, 'munged')}", f"--log-file={log}",
                    f"--seed-file={root / 'munge-key' / 'munged.seed'}", "--num-threads=10"],
                   capture_output=True, text=True, timeout=30)

    def ok():
        return subprocess.run([_which("munge"), "-n", "-S", str(sock)], capture_output=True).returncode == 0

    _wait("munged", ok, 20, log)


def _start_mariadb(root: Path) -> None:
    data, log, sock = root / "mysql" / "data", root / "mysql" / "error.log", root / "mysql" / "mysqld.sock"
    if not data.exists():
        proc = subprocess.run([_which("mariadb-install-db"), "--no-defaults", "--user=root", f"--datadir={data}",
                               "--auth-root-authentication-method=socket", "--skip-test-db"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ClusterError(f"mariadb-install-db failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
    port = _ports(root)["mysql"]
    with open(root / "mysql" / "stdout.log", "ab") as out:
        subprocess.Popen([_which("mariadbd"), "--no-defaults", "--user=root", f"--datadir={data}",
                          f"--socket={sock}", f"--port={port}", "--bind-address=127.0.0.1", "--skip-name-resolve",
                          f"--pid-file={_pidfile(root, 'mariadbd')}", f"--log-error={log}",
                          "--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M"],
                         stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)
    client = [_which("mariadb"), "--no-defaults", "-S", str(sock), "-u", "root"]

    def ok():
        return subprocess.run([*client, "-e", "select 1"], capture_output=True).returncode == 0

    _wait("mariadbd", ok, 60, log)
    grant = ("CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test';"
             "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")
    proc = subprocess.run([*client, "-e", grant], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ClusterError(f"MariaDB: could not create the slurm user: {proc.stderr.strip()}")


def _start_slurm_daemon(cluster: Cluster, daemon: str, ready, timeout: float) -> None:
    root = cluster.root
    args = [_which(daemon)]
    if daemon != "slurmdbd":  # slurmdbd reads slurmdbd.conf beside SLURM_CONF
        args += ["-f", str(cluster.conf)]
    proc = subprocess.run(args, env=cluster.env(), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    log = root / "log" / f"{daemon}.log"
    if proc.returncode != 0:
        raise ClusterError(f"{daemon} failed to start ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-300:]}; its log: {_tail(log)}")
    _wait(daemon, lambda: _pid(root, daemon) is not None and ready(), timeout, log)


def start(root: Path) -> Cluster:
    """Configure (unless done) and start the cluster in ``root``; returns once the node is idle. On failure
    stops what it started and raises ClusterError naming the daemon and its log's tail."""
    reason = unavailable()
    if reason:
        raise ClusterError(reason)
    root = Path(root).resolve()
    cluster = write_config(root) if not (root / "ports").exists() else Cluster(root)
    try:
        _start_munge(root)
        _start_mariadb(root)

        def dbd_ready():
            return cluster.run("sacctmgr", "-n", "list", "cluster", check=False, timeout=20).returncode == 0

        _start_slurm_daemon(cluster, "slurmdbd", dbd_ready, 90)
        for command in (["add", "cluster", CLUSTER], ["add", "account", ACCOUNT, f"Cluster={CLUSTER}",
                                                      "Description=medti tests", "Organization=medti"],
                        ["add", "user", getpass.getuser(), f"Account={ACCOUNT}", f"Cluster={CLUSTER}"]):
            proc = cluster.run("sacctmgr", "-i", *command, check=False)
            said = proc.stdout + proc.stderr
            if proc.returncode != 0 and "already exists" not in said and "Nothing new added" not in said:
                raise ClusterError(f"sacctmgr {' '.join(command)}: {(proc.stderr or proc.stdout).strip()}")

        def ctld_ready():
            return cluster.run("scontrol", "ping", check=False, timeout=20).stdout.count("UP") >= 1

        _start_slurm_daemon(cluster, "slurmctld", ctld_ready, 60)
        _start_slurm_daemon(cluster, "slurmd", lambda: cluster.node_state().startswith(("idle", "mix")), 60)
    except BaseException:
        stop(root)
        raise
    return cluster


def stop(root: Path, timeout: float = 30) -> None:
    """Cancel the cluster's jobs and stop its daemons (those whose pid files in ``root`` name a live one)."""
    root = Path(root).resolve()
    cluster = Cluster(root)
    if _pid(root, "slurmctld") is not None and cluster.conf.exists():
        with contextlib.suppress(Exception):
            cluster.run("scancel", "--full", "-u", getpass.getuser(), check=False, timeout=20)
            end = time.monotonic() + 20
            while time.monotonic() < end and cluster.queue():
                time.sleep(0.5)
    for daemon in reversed(DAEMONS):
        pid = _pid(root, daemon)
        if pid is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        while time.monotonic() < end and _alive(pid, daemon):
            time.sleep(0.2)
        if _alive(pid, daemon):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_cluster(root: Path | None = None):
    """A started cluster (in ``root``, or a new folder in the system's temporary folder), stopped on exit; the
    folder is removed on exit if this made it."""
    made = root is None
    if made:
        root = Path(tempfile.mkdtemp(prefix="medti-slurm-"))
    try:
        yield start(root)
    finally:
        stop(root)
        if made:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    usage = "usage: slurm_support.py start|stop|env DIR | profile-args PROFILE_CONFIG"
    if len(argv) != 2 or argv[0] not in ("start", "stop", "env", "profile-args"):
        print(usage, file=sys.stderr)
        return 2
    if argv[0] == "profile-args":
        print(" ".join(profile_args(Path(argv[1]))))
        return 0
    action, root = argv[0], Path(argv[1]).resolve()
    if action == "stop":
        stop(root)
        print(f"stopped the cluster in {root}", file=sys.stderr)
        return 0
    if action == "start":
        try:
            start(root)
        except ClusterError as exc:
            print(f"local SLURM cluster: {exc}", file=sys.stderr)
            return 1
        print(f"started the one-node cluster {CLUSTER} in {root} (partitions {', '.join(PARTITIONS)})",
              file=sys.stderr)
    env = Cluster(root).env({})
    print(f"export SLURM_CONF={env['SLURM_CONF']}")
    print(f"export PATH={root / 'bin'}:$PATH")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
