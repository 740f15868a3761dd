"""An emulated cluster network on one machine: one network namespace per MPI rank.

Layout (everything lives inside namespaces this module creates; nothing is added to the
host's own namespace, so deleting the namespaces removes every link)::

    PREFIXb   a namespace holding the bridge br0 and one veth end v<i> per node
    PREFIX<i> node i's namespace: eth0 (the other veth end), 10.<net>.0.<i+1>/24

Shaping uses ``tbf`` on both ends of each veth (eth0 for the node's egress, v<i> for its
ingress), so every node has its own full-duplex NIC of the given rate. The kernel here
has no ``netem``, so links add no latency: the emulation is bandwidth only.

MPI is forced onto TCP (MPICH's ch4 with libfabric's tcp provider, no shared memory) and
each rank is started inside its namespace with mpiexec's MPMD form (``-n 1 CMD : -n 1
CMD ...``); Hydra's PMI channel is an inherited file descriptor, so it works across
namespaces. Needs root, ``ip`` and ``tc``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

#: environment that keeps MPICH off shared memory and on plain TCP sockets
MPI_TCP_ENV = {"MPIR_CVAR_NOLOCAL": "1", "MPICH_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp",
               "FI_TCP_IFACE": "eth0"}

_RATE = re.compile(r"^(\d+(?:\.\d+)?)(k|m|g)bit$")
_UNIT = {"k": 1e3, "m": 1e6, "g": 1e9}


class EmulationUnavailable(Exception):
    """The machine cannot emulate the network (not root, no ``ip``/``tc``); exit 2."""


def parse_rate(text: str) -> float:
    """``100mbit`` -> 1e8 bits/s; raises ValueError naming the allowed forms."""
    m = _RATE.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"--rate: got {text!r}; allowed: a positive number with kbit, mbit or "
                         f"gbit, e.g. 100mbit,1gbit,10gbit")
    return float(m.group(1)) * _UNIT[m.group(2)]


def fmt_rate(bps: float | None) -> str:
    if bps is None:
        return "unshaped"
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale:
            return f"{bps / scale:g}{unit}"
    return f"{bps:g}bit"


def check_available() -> None:
    """Raise EmulationUnavailable with the reason when this machine cannot emulate."""
    if os.geteuid() != 0:
        raise EmulationUnavailable("needs root (it creates network namespaces and tc qdiscs); "
                                   "run it as root")
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        raise EmulationUnavailable(f"needs {' and '.join(missing)} (package iproute2) on PATH")


def run_checked(cmd, timeout=30):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def run_job(cmd, timeout, env=None, cwd=None):
    """Run ``cmd`` in its own process group; on timeout kill the whole group (mpiexec and
    every rank), so nothing outlives the benchmark. Returns the CompletedProcess."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # timeout, Ctrl-C: take the job's ranks down with it
        _kill_group(proc.pid)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _kill_group(pgid):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        time.sleep(0.3)


class Cluster:
    """``n_nodes`` emulated nodes on one bridge; use as a context manager.

    ``with Cluster(5) as c: c.shape(1e9); subprocess.run(c.mpmd([argv] * 5))``. Leaving the
    block (normally, by an exception, Ctrl-C or SIGTERM) kills what runs in the namespaces
    and deletes them.
    """

    def __init__(self, n_nodes: int, prefix: str | None = None):
        if n_nodes < 2:
            raise ValueError("an emulated cluster needs at least 2 nodes")
        self.n = n_nodes
        # unique per invocation, short enough for any name derived from it
        self.prefix = prefix or f"psgd{secrets.token_hex(3)}"
        self.bridge = f"{self.prefix}b"
        self.nodes = [f"{self.prefix}{i}" for i in range(n_nodes)]
        self.rate = None
        self._made = []
        self._old_handlers = {}

    # -- life cycle ----------------------------------------------------------------

    def __enter__(self):
        # SIGTERM/SIGHUP become exceptions so the finally-style teardown in __exit__ runs
        for sig in (signal.SIGTERM, signal.SIGHUP):
            self._old_handlers[sig] = signal.signal(sig, _raise_interrupt)
        try:
            self.create()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc):
        self.teardown()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        return False

    def create(self):
        ip = ["ip", "-n", self.bridge]
        self._add_netns(self.bridge)
        run_checked(ip + ["link", "add", "br0", "type", "bridge"])
        run_checked(ip + ["link", "set", "lo", "up"])
        run_checked(ip + ["link", "set", "br0", "up"])
        for i, ns in enumerate(self.nodes):
            self._add_netns(ns)
            # both veth ends are created directly inside their namespaces
            run_checked(ip + ["link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0",
                              "netns", ns])
            run_checked(ip + ["link", "set", f"v{i}", "master", "br0"])
            run_checked(ip + ["link", "set", f"v{i}", "up"])
            node = ["ip", "-n", ns]
            run_checked(node + ["addr", "add", f"{self.address(i)}/24", "dev", "eth0"])
            run_checked(node + ["link", "set", "eth0", "up"])
            run_checked(node + ["link", "set", "lo", "up"])

    def _add_netns(self, name):
        run_checked(["ip", "netns", "add", name])
        self._made.append(name)

    def address(self, i):
        # private addresses, reachable only inside this invocation's bridge namespace
        return f"10.201.0.{i + 1}"

    def teardown(self):
        """Kill every process left in our namespaces, then delete them (and so the links)."""
        for ns in reversed(self._made):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                  timeout=30).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._made = []

    def leftovers(self):
        """Namespaces with this cluster's prefix that still exist (empty after teardown)."""
        return namespaces_with_prefix(self.prefix)

    # -- shaping -------------------------------------------------------------------

    def interfaces(self):
        """(namespace, device) of both ends of every node's veth."""
        for i, ns in enumerate(self.nodes):
            yield ns, "eth0"
            yield self.bridge, f"v{i}"

    def shape(self, rate_bps: float | None):
        """Shape every NIC to ``rate_bps`` both ways (None: remove the shaping)."""
        for ns, dev in self.interfaces():
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"],
                           capture_output=True, timeout=30)
            if rate_bps is not None:
                # burst: 1 ms at the rate, at least 16 KiB (> the MTU; tbf splits larger
                # GSO packets). A bigger bucket lets small messages pass at line rate.
                burst = max(16384, int(rate_bps / 8 / 1000))
                run_checked(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf",
                             "rate", f"{int(rate_bps)}bit", "burst", str(burst),
                             "latency", "50ms"])
        self.rate = rate_bps

    # -- launching -----------------------------------------------------------------

    def mpmd(self, mpiexec: str, argvs) -> list:
        """The mpiexec command line that starts rank i of ``argvs`` in node i's namespace."""
        if len(argvs) > self.n:
            raise ValueError(f"{len(argvs)} ranks but only {self.n} emulated nodes")
        cmd = [mpiexec]
        for i, argv in enumerate(argvs):
            if i:
                cmd.append(":")
            cmd += ["-n", "1", "ip", "netns", "exec", self.nodes[i], *argv]
        return cmd

    @staticmethod
    def env(extra=None) -> dict:
        env = dict(os.environ)
        env.update(MPI_TCP_ENV)
        env.update(extra or {})
        return env


def namespaces_with_prefix(prefix: str) -> list:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines()
            if line.split() and line.split()[0].startswith(prefix)]


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":  # manual check: python -m psgd.netemu  (creates and removes 3 nodes)
    with Cluster(3) as cl:
        cl.shape(1e8)
        print(cl.prefix, namespaces_with_prefix(cl.prefix))
    print("left:", namespaces_with_prefix(cl.prefix), file=sys.stderr)
