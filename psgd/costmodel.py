"""A cost model for one synchronous step: compute phases plus bits over links.

Inputs are what psgd measures: the bits a worker sends up and receives down per step
(counted from the buffers handed to MPI), and the compute time of each phase. A link has
payload rate B (bits/s, full duplex: a NIC sends and receives B at once) and latency a.

Parameter server, n workers, S servers each owning d/S coordinates (psgd's sync loop:
workers compute, all messages go up, the server works, all models come down; no overlap
is assumed, so this is the serial upper bound of one step)::

    T_ps = t_worker + t_server * n / (n0 S)
           + max(b_up,   n b_up / S) / B       (uplink: a server's NIC takes n/S messages
           + max(b_down, n b_down / S) / B      downlink: and sends n/S: the incast)
           + 2 a

t_server is the server's decode + apply + encode per step measured with n0 workers; it
grows with the number of messages a server handles (n/S). Allreduce GD on n ranks (ring
or reduce-scatter + all-gather: every rank sends and receives 2(n-1)/n of the vector)::

    T_ar = t_grad + 2 (n - 1)/n * b / B + 2 (n - 1) a

Time to eps = iterations to eps x T. The emulation has no added latency (no netem), so a
is a model term only; with a = 0 the model is compared with the emulated runs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Link:
    rate_bps: float
    latency_s: float = 0.0


def ps_network_s(bits_up: float, bits_down: float, n: int, servers: int, link: Link) -> float:
    """Seconds a psgd step spends on the wire: the busiest NIC, both directions, + latency."""
    per_server = n / servers
    up = max(bits_up, per_server * bits_up) / link.rate_bps
    down = max(bits_down, per_server * bits_down) / link.rate_bps
    return up + down + 2 * link.latency_s


def allreduce_network_s(bits: float, n: int, link: Link) -> float:
    """Seconds a ring Allreduce of a ``bits``-bit vector spends on the wire per rank."""
    if n == 1:
        return 0.0
    return 2 * (n - 1) / n * bits / link.rate_bps + 2 * (n - 1) * link.latency_s


def ps_step_s(t_worker, t_server, n0, bits_up, bits_down, n, servers, link) -> float:
    """Predicted seconds per psgd step (see the module docstring)."""
    return (t_worker + t_server * n / (n0 * servers)
            + ps_network_s(bits_up, bits_down, n, servers, link))


def allreduce_step_s(t_grad, bits, n, link) -> float:
    return t_grad + allreduce_network_s(bits, n, link)


def compute_from_unshaped(t_unshaped: float, network_unshaped: float) -> float:
    """The compute share of a step measured without shaping: what the unshaped link's own
    transfer time (at its measured bandwidth) does not explain. Never negative."""
    return max(0.0, t_unshaped - network_unshaped)


def ps_bottleneck(t_worker, t_server, n0, bits_up, bits_down, n, servers, link) -> str:
    """Which term of T_ps is largest: worker, server CPU, or the network."""
    terms = {"worker": t_worker, "server cpu": t_server * n / (n0 * servers),
             "network": ps_network_s(bits_up, bits_down, n, servers, link)}
    return max(terms, key=terms.get)
