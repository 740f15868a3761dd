"""``psgd run``: decide each rank's role, build the run, and never hang on an error.

Every rank loads the config, then meets the others within ``run.timeout_s`` (a watchdog
before MPI_Init, a start-up barrier after it: :mod:`psgd.startup`). Rank 0 locks and
checks the output directory (:mod:`psgd.rundir`) before anything is launched. Every rank
builds the same problem deterministically; rank 0 also solves for f* to high accuracy. A
non-blocking all-reduce then tells every rank whether setup failed anywhere, so a bad
config or data path ends all ranks with exit 2 and one line; with ``--resume`` the ranks
then agree on the newest checkpoint whose every file is intact. After setup, an
unhandled exception on any rank prints one line naming the rank, removes the job's
shared memory and calls ``MPI.COMM_WORLD.Abort(1)``, which ends the whole job.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback

import numpy as np

from . import checkpoint, config, metrics, problems, startup, supervise
from .errors import ConfigError, DataFormatError, PsgdError, RunError
from .rundir import RunDir
from .runtime import RunContext, build_context, load_problem
from .transport import Roles

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: the run was stopped by SIGTERM/SIGUSR1 after writing a checkpoint; --resume continues it
EXIT_CHECKPOINTED = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _launch_hint(path):
    return (f"psgd run needs at least 2 MPI ranks (rank 0 is the server, the others are workers); "
            f"launch it with e.g.: mpiexec -n 5 psgd run {path}   (or srun -n 5 psgd run {path})")


def run(path: str, overrides=(), out: str | None = None, resume: bool = False,
        overwrite: bool = False) -> int:
    t_start = startup.started_at()  # the deadlines count from the launcher's start of us
    # The config comes first, without MPI: it says how long start-up may take. Its errors
    # are reported in the setup round below, like every other setup failure.
    cfg, cfg_error = None, None
    try:
        cfg = config.load(path, overrides)
        if out is not None:
            cfg["output"]["dir"] = out
    except Exception as exc:  # noqa: BLE001 - re-raised in the setup round
        cfg_error = exc
    timeout = cfg["run"]["timeout_s"] if cfg else config.RUN_SPEC["timeout_s"].default
    watchdog = None
    if "mpi4py.MPI" not in sys.modules:  # (a caller that imported MPI has initialised it)
        watchdog = guard_start(t_start, timeout, cfg)
    from mpi4py import MPI  # MPI_Init: waits for every rank of the job

    if watchdog is not None:
        watchdog.cancel()
    supervise.tell_segments()  # MPI_Init has made them: the parent removes them if we die
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size < 2:
        print(f"psgd: error: {_launch_hint(path)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        startup.barrier(comm, t_start + startup.deadline_s(rank, timeout), timeout)
    except RunError as exc:
        _abort(comm, f"psgd: error on rank {rank}: {exc}")

    # -- setup on every rank, then agree on whether it worked ---------------------------
    code, message = EXIT_OK, ""
    ctx = rundir = None
    # The server turns SIGTERM/SIGUSR1 (SLURM's warning before the time limit) into
    # "checkpoint and stop"; workers must survive the signal until the server stops them.
    received = []

    def on_stop_signal(signum, frame):
        received.append(signum)
        for sig in STOP_SIGNALS:  # one stop is enough; a second signal must not kill the exit
            signal.signal(sig, signal.SIG_IGN)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_stop_signal)
    try:
        if cfg_error is not None:
            raise cfg_error
        roles = Roles.layout(size, cfg["run"]["servers"])
        if roles.n_workers < 1:
            raise ConfigError(f"run.servers: got {cfg['run']['servers']} with {size} ranks; "
                              f"allowed: fewer servers than ranks (the others are workers)")
        config.check_launch(cfg, roles.n_workers)  # data file, worker rules: one line, exit 2
        if rank == 0:  # the output directory is rank 0's: locked and checked before launch
            rundir = RunDir.claim(cfg["output"]["dir"], cfg, roles.n_workers, resume=resume,
                                  overwrite=overwrite)
        ps = load_problem(cfg, roles, rank)  # a worker: its shard only
        consts = problems.constants(ps) if rank == 0 else None
    except Exception as exc:  # noqa: BLE001 - reported below, then every rank stops
        code, message = _setup_failure(exc, rank)
    try:
        failed = _agree_setup(comm, rank, code, message, "loading the problem on all ranks")
        if failed:
            return failed
        # the constants need the whole problem: rank 0's, the same on every rank
        consts = comm.bcast(_shareable(consts), root=0)
        if consts.pop("has_smoothness_matrix"):  # a function of the problem (a quadratic's
            # Hessian, which every rank builds whole): taken from this rank's own problem
            consts["smoothness_matrix"] = problems.constants(ps)["smoothness_matrix"]
        try:
            ctx = build_context(cfg, roles, ps=ps, constants=consts)
            if roles.of(rank) == ("server", 0):  # f* to high accuracy: a setup failure if not
                t_solve = time.perf_counter()
                ctx.x_star, ctx.f_star = problems.solve(ctx.ps, copy=False)
                ctx.solve_s = time.perf_counter() - t_solve
                if ctx.f_star is None and cfg["run"]["target"] is not None:
                    raise ConfigError(f"run.target: got {cfg['run']['target']:g}, but problem "
                                      f"{cfg['problem']['name']} does not know f*; "
                                      f"allowed: null")
        except Exception as exc:  # noqa: BLE001 - reported below, then every rank stops
            code, message = _setup_failure(exc, rank)
        failed = _agree_setup(comm, rank, code, message, "setup on all ranks")
        if failed:
            return failed
        resume_step = _agree_resume_step(comm, ctx, rank) if resume else None
        if resume and resume_step is None:
            return EXIT_USAGE
        return _run(comm, ctx, rank, rundir, resume_step, received, path)
    finally:
        if rundir is not None:
            rundir.release()


def guard_start(t_start: float, timeout: float, cfg=None):
    """Before MPI_Init: put this rank under its supervising parent and start its start-up
    Watchdog; return the watchdog."""
    # the job's key first: the ranks of a job share this process's parent (the launcher's),
    # not the supervising parent each gets below
    key = startup.job_key()
    if supervise.supported():  # from here on this process is the rank, its parent waits
        supervise.start(int(startup.rank_from_env()), cfg["run"]["servers"] if cfg else 1,
                        cfg["output"]["dir"] if cfg else None)
    end = t_start + startup.deadline_s(startup.rank_from_env(), timeout)
    return startup.Watchdog(end - time.monotonic(), timeout, key,
                            on_fire=_said_why_and_remove_shm)


def _shareable(consts):
    """Rank 0's constants as they can be broadcast (numbers, and whether a smoothness
    matrix function exists), or None on the other ranks."""
    if consts is None:
        return None
    out = {k: v for k, v in consts.items() if k != "smoothness_matrix"}
    return dict(out, has_smoothness_matrix=consts.get("smoothness_matrix") is not None)


def _setup_failure(exc, rank):
    """(exit code, the one line) for an exception during setup."""
    if isinstance(exc, (ConfigError, DataFormatError)):
        return EXIT_USAGE, f"psgd: error: {exc}"
    if os.environ.get("PSGD_DEBUG"):
        traceback.print_exc()
    return EXIT_FAILED, f"psgd: rank {rank}: setup failed: {type(exc).__name__}: {exc}"


def _agree_setup(comm, rank, code, message, what) -> int:
    """The exit code of a setup phase agreed by every rank (0: it worked everywhere): MAX
    over ranks of code (+16*code on rank 0, so everyone learns whether rank 0 failed and
    only one rank prints when all fail the same way)."""
    from .comm import allreduce_max

    worst = allreduce_max(comm, code + 16 * (code if rank == 0 else 0), 600, what)
    if code and (rank == 0 or worst < 16):
        print(message, file=sys.stderr, flush=True)
    return worst % 16


def _run(comm, ctx, rank, rundir, resume_step, received, path) -> int:
    """The run; any exception from here on aborts the whole job."""
    role, index = ctx.roles.of(rank)
    try:
        if role == "server" and index > 0:
            return _run_range_server(comm, ctx, index, resume_step)
        if role == "server":
            rundir.start()
            return _run_server(comm, ctx, resume_step, received, path)
        return _run_worker(comm, ctx, index, resume_step)
    except BaseException as exc:  # noqa: BLE001
        text = str(exc) if isinstance(exc, PsgdError) else f"{type(exc).__name__}: {exc}"
        if os.environ.get("PSGD_DEBUG") or not isinstance(exc, PsgdError):
            traceback.print_exc()
        if rundir is not None:
            rundir.release()
        _abort(comm, f"psgd: error on rank {rank} ({ctx.roles.name(rank)}): {text}")
        return EXIT_FAILED


def _abort(comm, line: str) -> None:
    """Say why on one line, remove this job's shared memory, and end every rank."""
    print(line, file=sys.stderr, flush=True)
    sys.stderr.flush()
    supervise.said_why()
    remove_own_shm()
    time.sleep(0.5)  # let mpiexec forward that line before Abort tears the job down
    comm.Abort(EXIT_FAILED)


def own_shm_segments(pid="self") -> list:
    """The MPICH shared-memory segments process ``pid`` has mapped: its job's, no other's.

    MPICH names them /dev/shm/mpich_shm_*, maps them into every rank of a node and unlinks
    them in MPI_Finalize, which an aborted job never reaches.
    """
    found = []
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                fields = line.split(None, 5)
                name = fields[5].strip() if len(fields) == 6 else ""
                if name.startswith("/dev/shm/mpich_shm_") and name not in found:
                    found.append(name)  # an unlinked one reads "... (deleted)": not matched
    except OSError:
        pass  # no /proc (not Linux): nothing we can identify safely
    return found


def remove_own_shm(pid="self") -> None:
    remove_segments(own_shm_segments(pid))


def remove_segments(names) -> None:
    for name in names:
        try:
            os.unlink(name)
        except OSError:
            pass  # another rank of this node removed it first


def _said_why_and_remove_shm(pid) -> None:
    """The start-up watchdog's last act before it kills its rank (``pid``)."""
    supervise.said_why()
    remove_own_shm(pid)


def _agree_resume_step(comm, ctx, rank):
    """The newest kept checkpoint whose every file is intact, agreed by all ranks, or None.

    Each rank checks its own file of the latest and of the previous checkpoint (identity and
    checksum, psgd.checkpoint.verify); a bitwise OR over the ranks tells which are usable.
    Each rank reports its own damaged files in one line each, saying what happens instead.
    """
    from mpi4py import MPI

    from .comm import wait

    out_dir = ctx.cfg["output"]["dir"]
    steps = checkpoint.candidates(out_dir)[:2]
    role, j = ctx.roles.of(rank)
    reasons = checkpoint.verify(out_dir, steps, role, j)
    mine = sum(1 << i for i, why in enumerate(reasons) if why)
    send, damaged = np.array([mine], np.int64), np.zeros(1, np.int64)
    wait(comm.Iallreduce(send, damaged, op=MPI.BOR), 600, "the checkpoint check on all ranks")
    usable = [i for i in range(len(steps)) if not (int(damaged[0]) >> i) & 1]
    choice = usable[0] if usable else None
    for i, why in enumerate(reasons):
        if why and (choice is None or i < choice):
            then = (f"resuming from the previous checkpoint (step {steps[choice]}) instead"
                    if choice is not None else "no earlier complete checkpoint is left")
            print(f"psgd: {'' if choice is not None else 'error: --resume: '}{why}; {then}",
                  file=sys.stderr, flush=True)
    return None if choice is None else steps[choice]


def _run_worker(comm, ctx: RunContext, j: int, resume_step) -> int:
    from psgd.transport import WorkerLink
    from psgd.workers.loop import ShardedWorker, Worker

    links = [WorkerLink(comm, ctx.roles, j, wire_nbytes(up.max_nbytes()),
                        wire_nbytes(down.max_nbytes()), Worker.reply_deadline(ctx.cfg), s)
             for s, (up, down) in enumerate(zip(ctx.uplinks, ctx.downlinks))]
    worker = Worker(links[0], ctx, j) if len(links) == 1 else ShardedWorker(links, ctx, j)
    if resume_step is not None:
        worker.restore(resume_step)
    worker.run()
    return EXIT_OK


def wire_nbytes(codec_nbytes: int) -> int:
    """A message's size: the envelope plus the codec's bytes."""
    from psgd import wire

    return wire.HEADER_NBYTES + codec_nbytes


def _server_link(comm, ctx: RunContext):
    from psgd.transport import ServerLink

    model_nbytes = wire_nbytes(ctx.downlink.max_nbytes())
    # synchronous: one shared model buffer (the same bytes to every worker), and per-worker
    # buffers only for control messages; asynchronous: a model buffer per worker
    sync = ctx.alg.synchronous
    return ServerLink(comm, ctx.roles, wire_nbytes(ctx.uplink.max_nbytes()),
                      wire_nbytes(0) if sync else model_nbytes, ctx.cfg["run"]["timeout_s"],
                      shared_nbytes=model_nbytes if sync else 0)


def _peer_link(comm, ctx: RunContext, s: int):
    from psgd.transport import PeerLink

    if ctx.n_servers == 1:
        return None
    largest = max(sh.d for sh in ctx.shards)
    # a range of the model, or a small JSON record (END, TALLY)
    return PeerLink(comm, ctx.roles, s, wire_nbytes(8 * largest + 65536),
                    ctx.cfg["run"]["timeout_s"])


def _run_range_server(comm, ctx: RunContext, s: int, resume_step) -> int:
    """Server s > 0 of a sharded run: server 0 handles signals, checkpoints and the end of
    the run for all."""
    from psgd.server.loop import Server

    view = ctx.for_shard(s)
    Server(_server_link(comm, view), view, None, stop_requests=[],
           peers=_peer_link(comm, ctx, s)).run(resume_step)
    return EXIT_OK


def _run_server(comm, ctx: RunContext, resume_step, received: list, path: str) -> int:
    from psgd.server.loop import Server

    cfg = ctx.cfg
    out_dir = cfg["output"]["dir"]
    _write_outputs(out_dir, {"config.yaml": config.dump(cfg).encode()})
    omega = _omega(ctx)
    h = ctx.hyper
    print(f"psgd {cfg['algorithm']['name']} | {cfg['problem']['name']} on {_describe(ctx)} | "
          f"{ctx.n} workers | compressor {cfg['compressor']['name']} | mode {cfg['run']['mode']}"
          f" (tau={cfg['run']['max_staleness']})", flush=True)
    c = ctx.consts
    L_i = "unknown" if c.L_i is None else f"[{', '.join(f'{v:.4g}' for v in c.L_i)}]"
    print(f"constants: L={_fmt(c.L)} mu={_fmt(c.mu)} L_i={L_i} f*={_fmt(ctx.f_star, '.12g')} "
          f"(solved in {ctx.solve_s:.1f} s)", flush=True)
    print(f"step sizes: gamma={h.gamma:.6g} alpha={h.alpha:.6g} momentum={h.momentum:g} "
          f"form={h.form} omega={_fmt(omega)}{f' p={h.p_full:.6g}' if h.p_full else ''} "
          f"[{h.rule}]", flush=True)
    if h.ball_radius is not None:
        print(f"ball: ||x - x*|| <= {h.ball_radius:.6g} (proven radius, in summary.json)", flush=True)
    mets = metrics.Metrics(ctx, out_dir, resume=resume_step is not None)
    view = ctx.for_shard(0)
    server = Server(_server_link(comm, view), view, mets, stop_requests=received,
                    peers=_peer_link(comm, ctx, 0))
    if resume_step is not None:
        print(f"resuming from the checkpoint at step {resume_step}", flush=True)
    status = server.run(resume_step)
    segments = server.wall_segments + [time.perf_counter() - server.t_start]
    wall = sum(segments)
    last = mets.last
    mets.close()
    if status == "interrupted":
        print(f"stopped by signal {received[0]} at step {server.state.step}: checkpoint written; "
              f"continue with: psgd run {path} --out {out_dir} --resume", flush=True)
        return EXIT_CHECKPOINTED
    counters, staleness, ranges = _totals(server, ctx)
    summary = {
        "status": status,
        **({"failure": server.failure, "failed_at_step": server.state.step}
           if status == "failed" else {}),
        "iterations": server.state.step,
        "wall_s": round(wall, 6),
        # one entry per run segment (a resumed run: up to each checkpoint it resumed from)
        "wall_segments_s": [round(v, 6) for v in segments],
        "target_reached": mets.reached,
        "final_loss": last["loss"],
        "final_subopt": last["subopt"],
        "final_grad_norm": last["grad_norm"],
        "f_star": ctx.f_star,
        "bits_up_total": 8 * counters["bytes_up"],
        "bits_down_total": 8 * counters["bytes_down"],
        "payload_bits_up_total": 8 * counters["payload_up"],
        "payload_bits_down_total": 8 * counters["payload_down"],
        "epochs": server.epochs,
        "messages_up": counters["messages_up"],
        "messages_down": counters["messages_down"],
        "staleness_max": max(staleness, default=0),
        "staleness_hist": {str(k): v for k, v in sorted(staleness.items())},
        "servers": ctx.n_servers,
        **({"shards": ranges} if ranges else {}),
        "stepsize": h.gamma,
        "stepsize_rule": h.rule,
        **({"ball_radius": h.ball_radius} if h.ball_radius is not None else {}),
        "alpha": h.alpha,
        "momentum": h.momentum,
        **({"p_full": h.p_full} if h.p_full else {}),
        "async_form": h.form,
        "omega": omega,
        "delta": None if ctx.compressor.unbiased else ctx.compressor.delta(ctx.d),
        "L": ctx.consts.L, "L_i": ctx.consts.L_i, "mu": ctx.consts.mu,
        "n_workers": ctx.n, "d": ctx.d, "weights": [float(w) for w in ctx.ps.weights],
        "server_time_s": {k: round(v, 6) for k, v in server.timers.items()},
        # server 0's peak resident memory (MiB), taken before the summary is written
        "server_peak_rss_mb": metrics.peak_rss_mb(),
        "versions": metrics.versions(),
    }
    _write_outputs(out_dir, {"model.npy": lambda fh: _write_npy(fh, server.final_x),
                             "summary.json": metrics.json_bytes(summary)})
    print(f"done: {status} after {summary['iterations']} steps in {wall:.2f} s; "
          f"final subopt {_fmt(summary['final_subopt'], '.3e')}; bits up {metrics.fmt_bits(summary['bits_up_total'])}, "
          f"down {metrics.fmt_bits(summary['bits_down_total'])}; staleness max {summary['staleness_max']}; "
          f"wrote {out_dir}/summary.json", flush=True)
    if status == "failed":
        hint = (f"; try a smaller algorithm.stepsize (it was {h.gamma:.6g})"
                if server.metrics.diverged_at is not None else "")  # (not for a stop signal)
        print(f"psgd: error: the run failed: {server.failure}{hint}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    return EXIT_OK


def _totals(server, ctx):
    """(counters, staleness histogram, per-range rows) summed over every server."""
    from collections import Counter

    counters, staleness = Counter(server.counters), Counter(server.staleness)
    if ctx.n_servers == 1:
        return counters, staleness, None
    rows = []
    for t in [server.tally()] + [server.tallies[s] for s in sorted(server.tallies)]:
        sh = ctx.shards[t["server"]]
        if t["server"]:
            counters.update(t["counters"])
            staleness.update({int(k): v for k, v in t["staleness_hist"].items()})
        c = t["counters"]
        rows.append({"server": t["server"], "lo": sh.lo, "hi": sh.hi, "steps": t["step"],
                     "bits_up": 8 * c["bytes_up"], "bits_down": 8 * c["bytes_down"],
                     "staleness_max": max((int(k) for k in t["staleness_hist"]), default=0),
                     "staleness_hist": t["staleness_hist"],
                     "server_time_s": {k: round(v, 6) for k, v in t["timers"].items()},
                     "peak_rss_mb": t["peak_rss_mb"]})
    return counters, staleness, rows


def _write_outputs(out_dir: str, files: dict) -> None:
    """Replace these output files together, or leave every one as it was (RunError)."""
    from .rundir import replace_files

    step = checkpoint.latest(out_dir)
    replace_files(out_dir, files, "" if step is None else f"; the checkpoint at step {step} is "
                                                         f"intact (--resume continues from it)")


def _write_npy(fh, x: np.ndarray) -> None:
    """``np.save`` without a copy of x, and with the OS's own error on a full disk (np.save
    writes a real file with tofile, whose error does not say why)."""
    fmt = np.lib.format
    fmt.write_array_header_1_0(fh, fmt.header_data_from_array_1_0(x))
    fh.write(memoryview(np.ascontiguousarray(x)).cast("B"))


def _omega(ctx):
    """The omega the step rules used (with sharded servers, the worst range's)."""
    if not ctx.compressor.unbiased:
        return None
    return max(up.compressor.omega(up.d) for up in ctx.uplinks)


def _fmt(v, spec=".6g"):
    return "n/a" if v is None else format(v, spec)


def _describe(ctx):
    info = ctx.ps.describe()
    return ", ".join(f"{k}={v}" for k, v in info.items() if k in ("dataset", "n_samples", "d"))
