"""Bring up a real single-node SLURM cluster in a temporary directory (for tests).

Nothing here touches /etc/slurm: every file (slurm.conf, state, spool, logs, pid files)
lives in a fresh temp dir and clients find it through ``SLURM_CONF``.  The daemons run in
the foreground (``-D``) as our own child processes, so we know their pids exactly and can
always stop them.  Every wait has a timeout; nothing here can hang.

Requirements: Debian-like system, root, ``apt-get`` (to install the Debian packages
``slurmctld slurmd slurm-client munge`` when they are missing).  When any of that is not
available, :func:`ensure_slurm` raises :class:`SlurmUnavailable` with a clear reason, which
tests turn into a skip.

Usage::

    with SlurmCluster() as cluster:          # start() ... stop()
        jobid = cluster.sbatch(["--wait", "job.sbatch"], cwd=repo, timeout=120)
        info = cluster.job(jobid)             # {'JobState': 'COMPLETED', 'ExitCode': '0:0', ...}

Facts this relies on are in shared/notes/slurm-ci.md (Slurm 22.05, munge 0.5, no systemd).
"""
from __future__ import annotations

import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue",
            "scancel", "munged", "munge", "unmunge"]
SBIN_DIRS = ["/usr/sbin", "/sbin", "/usr/local/sbin"]
NODE = "localhost"


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be had here (not root, no apt-get, install or munge failed): the message
    says why; tests turn it into a skip."""


class SlurmStartError(RuntimeError):
    """SLURM is installed but slurmctld/slurmd did not come up: a real failure, with log tails."""


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=path)


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _run(cmd, timeout: float, env=None, check=False, **kw) -> subprocess.CompletedProcess:
    """subprocess.run with a timeout that never raises TimeoutExpired (returns rc 124)."""
    try:
        return subprocess.run(cmd, env=env, timeout=timeout, check=check, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    except subprocess.TimeoutExpired as e:
        def _s(x):
            return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
        return subprocess.CompletedProcess(cmd, 124, _s(e.stdout),
                                           _s(e.stderr) + f"\n[timed out after {timeout}s]")


def ensure_slurm(install: bool = True, timeout: float = 600) -> None:
    """Make sure the SLURM and munge binaries exist, installing the Debian packages if
    allowed (root + apt-get).  Raises SlurmUnavailable(reason) otherwise."""
    missing = _missing_binaries()
    if not missing:
        return
    if not install:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and install disabled")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and not root "
                               "(cannot apt-get install " + " ".join(PACKAGES) + ")")
    apt = shutil.which("apt-get")
    if apt is None:
        raise SlurmUnavailable(f"SLURM binaries missing ({', '.join(missing)}) and no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install_cmd = [apt, "install", "-y", "-q", "--no-install-recommends",
                   "-o", "DPkg::Lock::Timeout=120", *PACKAGES]
    deadline = time.monotonic() + timeout
    r = _run(install_cmd, timeout=max(10.0, deadline - time.monotonic()), env=env)
    if r.returncode != 0:
        # Package lists may be missing or stale: update once and retry.
        _run([apt, "update", "-q", "-o", "DPkg::Lock::Timeout=120"],
             timeout=max(10.0, min(300.0, deadline - time.monotonic())), env=env)
        r = _run(install_cmd, timeout=max(10.0, deadline - time.monotonic()), env=env)
    missing = _missing_binaries()
    if missing:
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-3:]
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed (rc={r.returncode}); "
                               f"still missing {', '.join(missing)}: {' | '.join(tail)}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists": reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return not _pid_alive(pid)


SLURM_CONF_TEMPLATE = """\
# Generated by tests/slurm_cluster.py: single-node test cluster, all state under {d}
ClusterName=psgdci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
# socket: our private munged.  cred_expire is also how long a requeued job is held
# (BeginTime) before it may start again: 120 s by default; releasing it earlier by hand fails
# with "Job credential revoked".
AuthInfo=socket={d}/munge/munge.socket,cred_expire={cred_expire}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults 60 s / 30 s): a requeued job becomes eligible
# when its hold expires, which no event announces.
SchedulerParameters=sched_interval=2,bf_interval=2
SwitchType=switch/none
MailProg=/bin/true
MpiDefault=pmi2
ReturnToService=2
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmdParameters=config_overrides
KillWait={kill_wait}
# MinJobAge: finished jobs stay visible to scontrol for >= 16 s, and sbatch --wait polls every
# 8 s (its interval grows 2 -> 8 -> 32 s while below MinJobAge/2).  MinJobAge=0 does not keep
# records here (22.05 purged them ~5 s after completion).
MinJobAge=16
# A fresh job-id range per cluster: MPICH under srun names its shared-memory segment
# (/dev/shm/mpich_shm_*) after the job step, and a segment left behind by a killed run of a
# previous test cluster's job with the same id makes MPI_Init spin forever.
FirstJobId={first_job_id}
InactiveLimit=0
NodeName={node} NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 SocketsPerBoard=1 CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


class SlurmCluster:
    """A single-node SLURM (slurmctld + slurmd on localhost) living in a temp dir."""

    def __init__(self, cpus: int = 8, workdir: str | os.PathLike | None = None,
                 kill_wait: int = 10, cred_expire: int = 15, first_job_id: int | None = None,
                 extra_path: list[str] | None = None,
                 keep_dir: bool = False):
        self.cpus = cpus
        self.kill_wait = kill_wait
        self.cred_expire = cred_expire
        self.first_job_id = first_job_id or random.randint(10_000, 60_000_000)
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="psgd-slurm-"))
        self.keep_dir = keep_dir
        self.conf = self.dir / "slurm.conf"
        self.ctld: subprocess.Popen | None = None
        self.slurmd: subprocess.Popen | None = None
        self.munged: subprocess.Popen | None = None
        self.munge_socket = self.dir / "munge" / "munge.socket"
        self.timings: dict[str, float] = {}
        # Jobs run with the submitting environment (sbatch --export=ALL is the default):
        # put this Python's bin dir first, so jobs use the psgd installed next to it.
        path = [str(Path(sys.executable).parent), *(extra_path or [])]
        path += [os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), *SBIN_DIRS]
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=os.pathsep.join(path))
        for var in list(self.env):  # never inherit a surrounding allocation
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and var != "SLURM_CONF":
                del self.env[var]

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> "SlurmCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 60) -> None:
        t0 = time.monotonic()
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            raise SlurmUnavailable("the test cluster runs slurmctld/slurmd/munged as root: not root")
        ensure_slurm()
        self.timings["install"] = time.monotonic() - t0
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF_TEMPLATE.format(
            d=self.dir, ctld_port=_free_port(), slurmd_port=_free_port(), node=NODE,
            cpus=self.cpus, kill_wait=self.kill_wait, cred_expire=self.cred_expire,
            first_job_id=self.first_job_id))
        t1 = time.monotonic()
        self._start_munge(timeout=15)
        devnull = subprocess.DEVNULL
        out = open(self.dir / "log" / "daemons.out", "ab")
        try:
            self.ctld = subprocess.Popen(
                [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)],
                env=self.env, stdin=devnull, stdout=out, stderr=out, start_new_session=True)
            self._wait_for(self._ctld_up, timeout=20, what="slurmctld to answer 'scontrol ping'")
            self.slurmd = subprocess.Popen(
                [_which("slurmd"), "-D", "-f", str(self.conf), "-N", NODE],
                env=self.env, stdin=devnull, stdout=out, stderr=out, start_new_session=True)
        finally:
            out.close()
        self._wait_node_idle(timeout=max(5.0, timeout - (time.monotonic() - t0)))
        self.timings["bringup"] = time.monotonic() - t1

    def stop(self, timeout: float = 30) -> None:
        """Cancel every job, shut the daemons down, stop our munged."""
        t0 = time.monotonic()
        if self.ctld is not None and self.ctld.poll() is None:
            self.run(["scancel", "--user", str(os.getuid())], timeout=10)

            def queue_empty():
                r = self.run(["squeue", "-h", "-o", "%i"], timeout=5)
                return r.returncode == 0 and not r.stdout.strip()
            self._wait_for(queue_empty, timeout=self.kill_wait + 10, what="jobs to end",
                           raise_=False)
            self.run(["scontrol", "shutdown"], timeout=10)
        for name in ("slurmd", "ctld"):
            proc = getattr(self, name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=max(1.0, timeout / 2))
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
            setattr(self, name, None)
        self._kill_leftovers()
        self._stop_munge()
        self.timings["shutdown"] = time.monotonic() - t0
        if self._own_dir and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _job_processes(self) -> list[int]:
        """Processes of this cluster's jobs (slurmstepd, batch scripts, srun, ranks): they
        carry SLURM_CONF=<our slurm.conf> in their environment, inherited from us."""
        tag = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if tag in f.read().split(b"\0"):
                        pids.append(int(entry))
            except OSError:
                continue
        return pids

    def _kill_leftovers(self, timeout: float = 10) -> None:
        """SIGKILL whatever of our jobs survived the shutdown (e.g. ranks spinning in MPI_Init
        whose slurmstepd lost its slurmd): nothing of this cluster may outlive it."""
        pids = self._job_processes()
        if not pids:
            return
        self.timings["leftovers_killed"] = len(pids)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + timeout
        for pid in pids:
            _wait_pid_gone(pid, max(0.1, deadline - time.monotonic()))

    # ---------------------------------------------------------------- munge
    # A private munged (own key, socket, pid and log files under the temp dir), so that
    # clusters never share, or stop, each other's munged, and /etc/munge is not needed.
    def _munge_ok(self) -> bool:
        sock = ["--socket", str(self.munge_socket)]
        try:
            cred = subprocess.run([_which("munge"), *sock, "-n"], capture_output=True, timeout=5)
            if cred.returncode != 0:
                return False
            r = subprocess.run([_which("unmunge"), *sock], input=cred.stdout,
                               capture_output=True, timeout=5)
            return r.returncode == 0
        except (subprocess.TimeoutExpired, OSError):
            return False

    def _start_munge(self, timeout: float) -> None:
        import grp
        import pwd
        try:
            uid, gid = pwd.getpwnam("munge").pw_uid, grp.getgrnam("munge").gr_gid
        except KeyError:
            raise SlurmUnavailable("no 'munge' user/group (the munge package creates them)") from None
        d = self.dir / "munge"
        d.mkdir(exist_ok=True)
        d.chmod(0o755)     # munged: the socket directory must be searchable by all
        os.chown(d, uid, gid)
        self.dir.chmod(0o755)  # munged (user munge) must reach its directory
        key = d / "munge.key"
        if not key.exists():
            r = _run([_which("mungekey") or "mungekey", "--create", "--keyfile", str(key)],
                     timeout=30)
            if r.returncode != 0:
                raise SlurmUnavailable(f"'mungekey --create' failed: {r.stderr.strip()}")
            os.chown(key, uid, gid)
            key.chmod(0o400)
        log = open(d / "munged.out", "ab")
        try:
            self.munged = subprocess.Popen(
                [_which("munged"), "--foreground", "--socket", str(self.munge_socket),
                 "--key-file", str(key), "--pid-file", str(d / "munged.pid"),
                 "--log-file", str(d / "munged.log"), "--seed-file", str(d / "munged.seed")],
                user=uid, group=gid, extra_groups=[], stdin=subprocess.DEVNULL, stdout=log,
                stderr=log, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self._munge_ok():
            if self.munged.poll() is not None or time.monotonic() > deadline:
                tail = " | ".join((d / "munged.out").read_text(errors="replace").splitlines()[-3:])
                raise SlurmUnavailable(f"munged did not come up (rc={self.munged.poll()}): {tail}")
            time.sleep(0.1)

    def _stop_munge(self) -> None:
        proc, self.munged = self.munged, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    # ---------------------------------------------------------------- helpers
    def _wait_for(self, pred, timeout: float, what: str, interval: float = 0.25,
                  raise_: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            for name in ("ctld", "slurmd"):
                proc = getattr(self, name, None)
                if proc is not None and proc.poll() is not None and raise_:
                    raise SlurmStartError(f"{name} exited with {proc.returncode} while waiting "
                                           f"for {what}; log: {self.log_tail()}")
            if pred():
                return True
            if time.monotonic() >= deadline:
                if raise_:
                    raise SlurmStartError(f"timed out after {timeout:.0f}s waiting for {what}; "
                                           f"log: {self.log_tail()}")
                return False
            time.sleep(interval)

    def log_tail(self, n: int = 8) -> str:
        lines = []
        for name in ("daemons.out", "slurmctld.log", "slurmd.log"):
            p = self.dir / "log" / name
            if p.exists():
                tail = p.read_text(errors="replace").strip().splitlines()[-n:]
                lines.append(f"[{name}] " + " | ".join(tail))
        return " ".join(lines) or "(no logs)"

    def _ctld_up(self) -> bool:
        r = self.run(["scontrol", "ping"], timeout=5)
        return r.returncode == 0 and "UP" in r.stdout

    def node_state(self) -> str:
        r = self.run(["sinfo", "-h", "-N", "-n", NODE, "-o", "%t"], timeout=5)
        return r.stdout.strip() if r.returncode == 0 else ""

    def _wait_node_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        resumed = 0.0
        while True:
            state = self.node_state()
            if state.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc"):
                return
            if any(s in state for s in ("down", "drain", "drng", "fail")) and \
                    time.monotonic() - resumed > 2:
                self.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], timeout=5)
                resumed = time.monotonic()
            for name in ("ctld", "slurmd"):
                proc = getattr(self, name)
                if proc is not None and proc.poll() is not None:
                    raise SlurmStartError(f"{name} exited with {proc.returncode}; "
                                           f"log: {self.log_tail()}")
            if time.monotonic() >= deadline:
                raise SlurmStartError(f"node {NODE} not idle after {timeout:.0f}s "
                                       f"(state {state!r}); log: {self.log_tail()}")
            time.sleep(0.25)

    def run(self, cmd: list[str], timeout: float = 30, cwd=None, env=None
            ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (never raises on timeout)."""
        exe = _which(cmd[0]) or cmd[0]
        return _run([exe, *cmd[1:]], timeout=timeout, env=env or self.env, cwd=cwd)

    def sbatch(self, args: list[str], cwd=None, timeout: float = 120, env=None) -> str:
        """Submit with ``sbatch --parsable ARGS`` (add ``--wait`` to block, bounded by timeout).
        Returns the job id.  On a timeout the job is cancelled and TimeoutError raised."""
        r = self.run(["sbatch", "--parsable", *args], timeout=timeout, cwd=cwd, env=env)
        jobid = r.stdout.strip().splitlines()[0].split(";")[0] if r.stdout.strip() else ""
        if r.returncode == 124:
            if jobid:
                self.run(["scancel", jobid], timeout=10)
            raise TimeoutError(f"sbatch {shlex.join(args)} did not finish within {timeout}s "
                               f"(job {jobid or '?'}): {self.queue()}")
        if not jobid:
            raise RuntimeError(f"sbatch failed (rc={r.returncode}): {r.stderr.strip()}")
        return jobid

    def job(self, jobid: str) -> dict[str, str]:
        """``scontrol -o show job ID`` as a dict (first record: use jobs() for arrays)."""
        jobs = self.jobs(jobid)
        return jobs[0] if jobs else {}

    def jobs(self, jobid: str) -> list[dict[str, str]]:
        r = self.run(["scontrol", "-o", "show", "job", str(jobid)], timeout=10)
        out = []
        for line in r.stdout.splitlines():
            rec = {}
            for tok in line.split():
                if "=" in tok:
                    k, v = tok.split("=", 1)
                    rec.setdefault(k, v)
            if rec:
                out.append(rec)
        return out

    FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
             "BOOT_FAIL", "DEADLINE", "PREEMPTED")

    def wait_jobs(self, jobid: str, timeout: float, states=FINAL, poll: float = 0.5
                  ) -> list[dict[str, str]]:
        """Poll every ``poll`` s until the job (every task of an array job) is in one of
        ``states``; returns the last record seen of each (array tasks in index order).
        Records are remembered as they are seen, since SLURM purges finished ones after
        MinJobAge."""
        deadline = time.monotonic() + timeout
        seen: dict[str, dict[str, str]] = {}
        while True:
            recs = self.jobs(jobid)
            for r in recs:
                seen[r.get("JobId", "?")] = r
            if seen and all(r.get("JobState") in states for r in [*recs, *seen.values()]):
                def order(r):
                    t = r.get("ArrayTaskId", "")
                    return (int(t) if t.isdigit() else -1, int(r.get("JobId", "0")))
                return sorted(seen.values(), key=order)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {jobid} not in {states} after {timeout}s: "
                                   f"{[(r.get('JobId'), r.get('ArrayTaskId'), r.get('JobState'), r.get('Reason')) for r in seen.values()]}")
            time.sleep(poll)

    def wait_job(self, jobid: str, timeout: float, states=FINAL, poll: float = 0.5
                 ) -> dict[str, str]:
        """wait_jobs() for a plain job: its final record."""
        return self.wait_jobs(jobid, timeout, states, poll)[0]

    def queue(self) -> str:
        return self.run(["squeue", "-o", "%i %j %T %r %M"], timeout=10).stdout.strip()


if __name__ == "__main__":  # manual smoke test: python tests/slurm_cluster.py [script.sbatch]
    t = time.monotonic()
    with SlurmCluster(keep_dir=bool(os.environ.get("KEEP"))) as c:
        print("cluster dir", c.dir, "timings", c.timings)
        print(c.run(["sinfo"]).stdout)
        if len(sys.argv) > 1:
            t1 = time.monotonic()
            jid = c.sbatch(["--wait", *sys.argv[1:]], cwd=os.getcwd(), timeout=120)
            print("job", jid, {k: c.job(jid).get(k) for k in ("JobState", "ExitCode")},
                  f"{time.monotonic() - t1:.1f}s")
    print("timings", c.timings, f"total {time.monotonic() - t:.1f}s")
