"""A real one-node SLURM cluster on this machine (Debian's slurmctld, slurmd and munge), for tests.

Needs root and the packages `slurmctld slurmd slurm-client munge` (.ci/run
installs them). Everything the daemons write lives in a temp folder; SLURM_CONF
and /etc/slurm/slurm.conf (where job steps look) point at the test cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

MUNGE_KEY = Path("/etc/munge/munge.key")
# Job steps (srun inside sbatch) look for the config at the default path, not at $SLURM_CONF.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by tests/slurm_cluster.py\n"
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
    return f"""{MARKER}ClusterName=local
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
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
NodeName={host} CPUs={os.cpu_count()} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName=local Nodes={host} Default=YES MaxTime=INFINITE State=UP
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


def start(root: Path) -> dict:
    """Start slurmctld + slurmd; return the environment the clients need. Waits until the node is idle."""
    host = socket.gethostname()
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if SYSTEM_CONF.exists() and not SYSTEM_CONF.read_text().startswith(MARKER):
        raise RuntimeError(f"{SYSTEM_CONF} belongs to a real cluster; not replacing it for a test")
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    SYSTEM_CONF.write_text(_conf(root, host))
    conf = SYSTEM_CONF
    env = dict(os.environ, SLURM_CONF=str(conf))
    _ensure_munge()
    subprocess.run(["slurmctld", "-c", "-f", str(conf)], check=True, env=env)
    subprocess.run(["slurmd", "-f", str(conf)], check=True, env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, env=env).stdout.strip()
        if state == "idle":
            return env
        time.sleep(0.5)
    raise RuntimeError(f"the local SLURM node never became idle (state {state!r}); see {root}/*.log")


def stop(root: Path, env: dict) -> None:
    """Shut both daemons down (munged stays: other users of munge may need it)."""
    subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
    for pid_file in ("slurmd.pid", "slurmctld.pid"):
        path = root / pid_file
        if path.exists():
            try:
                os.kill(int(path.read_text()), 15)
            except (ProcessLookupError, ValueError):
                pass
    # Without a controller, clients that find this config wait for timeouts (the SLURM executor
    # plugin asks scontrol at import): leave no config behind.
    if SYSTEM_CONF.exists() and SYSTEM_CONF.read_text().startswith(MARKER):
        SYSTEM_CONF.unlink()
