"""A real two-node SLURM cluster on this machine (Debian's slurmctld, two slurmds and munge), for tests.

Needs root and the packages `slurmctld slurmd slurm-client munge` (.ci/run
installs them). Everything the cluster has lives in a temp folder: its
slurm.conf too, which the daemons, the clients and the jobs find through
SLURM_CONF. /etc/slurm is never read or written, so on a machine that belongs
to a real cluster (a login node) the site's configuration stays as it is; the
test cluster listens on its own ports.

Its two nodes, n1 and n2, are two slurmd daemons on this one host (slurmd -N), each
with the host's CPUs and memory: enough for a job of two nodes, one task each, to
start its steps as on a real cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")
PORTS = (16817, 16818)  # not SLURM's defaults 6817/6818, which a site's daemons may hold
NODES = ("n1", "n2")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")


def missing() -> list[str]:
    """Binaries (or privileges) this machine lacks for a local cluster."""
    lack = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if os.geteuid() != 0:
        lack.append("root")
    return lack


def _memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        total_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return total_kb // 1024 - 1024  # a little under what the node has


def _conf(root: Path, host: str) -> str:
    nodes = "\n".join(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={PORTS[1] + i} "
                      f"CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN" for i, name in enumerate(NODES))
    return f"""ClusterName=local
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmctldPort={PORTS[0]}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
InactiveLimit=0
KillWait=5
MinJobAge=3600
{nodes}
PartitionName=local Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


def _ensure_munge() -> None:
    if not MUNGE_KEY.exists():
        MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
        MUNGE_KEY.write_bytes(os.urandom(1024))
        shutil.chown(MUNGE_KEY, "munge", "munge")
        MUNGE_KEY.chmod(0o400)
    for folder in ("/run/munge", "/var/lib/munge", "/var/log/munge"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    if subprocess.run(["munge", "-n"], capture_output=True).returncode != 0:
        subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force"], check=True)


def _srun_shim(root: Path, conf: Path) -> Path:
    """A folder with an `srun` that sets SLURM_CONF, first on the jobs' PATH.

    Snakemake's jobstep executor starts each job's `srun` with every SLURM_* variable but the
    allocation's removed -- SLURM_CONF too -- so that srun would look in /etc/slurm. The jobs
    inherit PATH (sbatch --export=ALL), so this `srun` gives it the test cluster's config back.
    """
    folder = root / "bin"
    folder.mkdir(exist_ok=True)
    shim = folder / "srun"
    shim.write_text(f'#!/bin/sh\nexport SLURM_CONF={conf}\nexec {shutil.which("srun")} "$@"\n')
    shim.chmod(0o755)
    return folder


def start(root: Path) -> dict:
    """Start slurmctld + the nodes' slurmds; return the environment the clients need. Waits until both are idle."""
    host = socket.gethostname()
    for sub in ("state", *(f"spool/{name}" for name in NODES)):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, host))
    env = dict(os.environ, SLURM_CONF=str(conf), PATH=f"{_srun_shim(root, conf)}:{os.environ['PATH']}")
    _ensure_munge()
    subprocess.run(["slurmctld", "-c", "-f", str(conf)], check=True, env=env)
    for name in NODES:
        subprocess.run(["slurmd", "-N", name, "-f", str(conf)], check=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
        if state == "idle":  # one line: every node is in it
            return env
        time.sleep(0.5)
    raise RuntimeError(f"the local SLURM nodes never became idle (state {state!r}); see {root}/*.log")


def stop(root: Path, env: dict) -> None:
    """Shut the daemons down (munged stays: other users of munge may need it)."""
    subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
    for pid_file in (*(f"slurmd-{name}.pid" for name in NODES), "slurmctld.pid"):
        path = root / pid_file
        if path.exists():
            try:
                os.kill(int(path.read_text()), 15)
            except (ProcessLookupError, ValueError):
                pass
