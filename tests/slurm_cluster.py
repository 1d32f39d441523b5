"""A throw-away single-node SLURM cluster for tests: munged, slurmctld and slurmd started from a generated config in
a temporary folder (one node with this machine's CPUs, proctrack/linuxproc, task/none, JobRequeue=1), stopped by
PID. Needs Debian's `slurm-wlm` and `munge` and root (slurmd runs jobs as their submitting user).

`REQUIRE_ENV` (set by .ci/run where it installed them): a cluster that cannot be started fails the test instead of
skipping it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
REQUIRE_ENV = "TCCLIP_REQUIRE_SLURM"
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def unavailable() -> str | None:
    """Why a cluster cannot be started here (None when it can)."""
    missing = [p for p in (*DAEMONS, *CLIENTS) if shutil.which(p) is None and not Path("/usr/sbin", p).exists()]
    if missing:
        return f"SLURM is not installed here (missing {', '.join(missing)}: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs jobs as their submitting user)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class ClusterDidNotStart(RuntimeError):
    """A daemon exited or the node never became idle (the message holds the daemons' logs)."""


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def job_states(self, job: str) -> dict[str, str]:
        """{JOBID_TASK: state} of an array (sacct is not configured: scontrol, while SLURM remembers the job)."""
        out = self.run("scontrol", "-o", "show", "job", job, check=False).stdout
        states = {}
        for line in out.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            key = f"{fields.get('ArrayJobId', fields.get('JobId'))}_{fields.get('ArrayTaskId', '')}"
            states[key] = fields.get("JobState", "?")
        return states

    def logs(self) -> str:
        return "\n".join(
            f"==== {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.root.glob("*.log"))
        )


def _config(root: Path, host: str, cpus: int, ctld_port: int, d_port: int, munge_socket: Path) -> str:
    return f"""ClusterName=tcclip-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
# cred_expire: how long a requeued job waits before it may start again (default 120 s); a short scheduler period
# starts it soon after.
AuthInfo=socket={munge_socket},cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def single_node_cluster(root: Path) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under `root`; yield once the node is idle; stop them by PID."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(exist_ok=True)
    os.chmod(root / "munge", 0o700)
    host = socket.gethostname().split(".")[0]
    key, munge_socket = root / "munge" / "munge.key", root / "munge" / "munge.socket"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    conf = root / "slurm.conf"
    conf.write_text(_config(root, host, os.cpu_count() or 1, _free_port(), _free_port(), munge_socket))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = Cluster(root, env)
    try:
        munged = [_exe("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={munge_socket}"]
        munged += [f"--pid-file={root / 'munge' / 'munged.pid'}", f"--log-file={root / 'munged.log'}"]
        munged += [f"--seed-file={root / 'munge' / 'munged.seed'}"]
        cluster.processes["munged"] = subprocess.Popen(
            munged, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(lambda: munge_socket.exists(), 20, "munged did not create its socket", cluster)
        for daemon in ("slurmctld", "slurmd"):
            command = [_exe(daemon), "-D", "-f", str(conf)] + (["-i"] if daemon == "slurmctld" else [])
            out = open(root / f"{daemon}.stdout.log", "w")
            cluster.processes[daemon] = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        _wait(
            lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%t", check=False).stdout,
            60,
            "the node did not become idle",
            cluster,
        )
        yield cluster
    finally:
        # Cancel what is left, then stop the daemons this function started, by PID, newest first.
        if "slurmctld" in cluster.processes:
            subprocess.run(["scancel", "--user", str(os.getuid())], env=env, capture_output=True, timeout=30)
            time.sleep(1)
        for name in reversed(list(cluster.processes)):
            proc = cluster.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _wait(condition, timeout_s: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise ClusterDidNotStart(f"{name} exited with {proc.returncode}\n{cluster.logs()}")
        time.sleep(0.2)
    raise ClusterDidNotStart(f"{what} within {timeout_s} s\n{cluster.logs()}")
