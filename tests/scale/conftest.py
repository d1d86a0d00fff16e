"""Real servers on localhost for the scale-out tests, started from the system's packages (``.ci/run`` installs
them): a throwaway PostgreSQL cluster (initdb into a temporary folder) and a single-node Slurm cluster (munged,
slurmctld, slurmd).  Where a server cannot be started the test skips and says why.  Select or deselect these
tests with ``-m servers`` / ``-m "not servers"``.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str, *dirs: str) -> str | None:
    return shutil.which(name) or next((p for d in dirs for p in glob.glob(os.path.join(d, name)) if os.access(p, os.X_OK)),
                                      None)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)
    if out.returncode != 0:
        pytest.skip(f"{what} failed: {(out.stderr or out.stdout).strip()[-400:]}")
    return out


# -- PostgreSQL -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on 127.0.0.1:<free port>, trust auth, data in a temporary folder; yields its base URL."""
    pytest.importorskip("psycopg", reason="psycopg not installed (pip install -e '.[postgres]')")
    initdb = _which("initdb", "/usr/lib/postgresql/*/bin")
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (no initdb; apt-get install postgresql)")
    bindir = os.path.dirname(initdb)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    tmp.chmod(0o755)
    as_user: list[str] = []
    if os.geteuid() == 0:                       # the server refuses to run as root: run it as 'postgres'
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        shutil.chown(tmp, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", free_port()
    _run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
         "initdb")
    opts = (f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=200")
    _run(as_user + [os.path.join(bindir, "pg_ctl"), "-D", str(data), "-l", str(tmp / "server.log"), "-w",
                    "-t", "30", "-o", opts, "start"], "starting PostgreSQL")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(as_user + [os.path.join(bindir, "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server) -> str:
    """A fresh, empty database on the test server (one per test)."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conninfo = postgres_server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(conninfo, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


# -- Slurm ----------------------------------------------------------------------------------------------------
SLURM_CONF = """\
ClusterName=benchtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
AuthInfo=socket={tmp}/munge.socket
StateSaveLocation={tmp}/state
SlurmdSpoolDir={tmp}/spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
SchedulerParameters=sched_interval=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _kill_pidfile(path: Path) -> None:
    try:
        os.kill(int(path.read_text().strip()), signal.SIGTERM)
    except (OSError, ValueError):
        pass


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node Slurm cluster on this host (munged with its own socket, slurmctld, slurmd), as root.

    Sets SLURM_CONF for this process, so sbatch/squeue (and submitit) talk to it; yields the config path.
    """
    tools = {n: _which(n, "/usr/sbin") for n in ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        pytest.skip(f"Slurm/munge not installed (missing {', '.join(missing)}; apt-get install slurm-wlm munge)")
    pytest.importorskip("submitit", reason="submitit not installed (pip install -e '.[slurm]')")
    if os.geteuid() != 0:
        pytest.skip("the test Slurm cluster runs as root (SlurmUser=root, munged --force); not root here")
    if not os.path.exists("/etc/munge/munge.key"):
        pytest.skip("no /etc/munge/munge.key (the munge package creates it)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    (tmp / "state").mkdir()
    (tmp / "spool").mkdir()
    conf = tmp / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=free_port(), d_port=free_port(),
                                      tmp=tmp, cpus=os.cpu_count() or 1))
    old_conf = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    try:
        _run([tools["munged"], "--force", f"--socket={tmp}/munge.socket", f"--pid-file={tmp}/munged.pid",
              f"--log-file={tmp}/munged.log", f"--seed-file={tmp}/munged.seed"], "starting munged")
        _run([tools["slurmctld"], "-f", str(conf)], "starting slurmctld")
        _run([tools["slurmd"], "-f", str(conf)], "starting slurmd")
        deadline = time.time() + 30
        state = ""
        while time.time() < deadline:
            state = subprocess.run([tools["sinfo"], "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.3)
        else:
            log = (tmp / "slurmctld.log").read_text()[-600:] if (tmp / "slurmctld.log").exists() else ""
            pytest.skip(f"the Slurm node did not come up (state {state!r}): {log}")
        yield conf
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            _kill_pidfile(tmp / f"{name}.pid")
        time.sleep(0.5)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        shutil.rmtree(tmp, ignore_errors=True)
