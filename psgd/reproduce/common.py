"""What every reproduction shares: running named variants of a base config, reading them
back, tables, and writing REPORT.md / result.json."""

from __future__ import annotations

import json
import os
from importlib import resources
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..results import Run
from ..sweep import run_points

#: the base configs, package data of psgd.reproduce (so an installed psgd has them; in the
#: source checkout configs/papers links here)
CONFIGS = Path(str(resources.files("psgd.reproduce") / "configs"))


class ReproduceError(RuntimeError):
    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


@dataclass
class Variant:
    name: str           # the run directory's name and the figure label
    label: str          # what the figure legend says
    sets: list = field(default_factory=list)  # psgd run --set overrides
    ranks: int = 5


def config_path(name: str) -> Path:
    path = CONFIGS / name
    if not path.is_file():
        raise ReproduceError(f"{path} not found (the configs ship as package data of "
                             f"psgd.reproduce: reinstall psgd)", 2)
    return path


def needs_data(*names) -> Path:
    """$PSGD_DATA holding the named LIBSVM files, else a usage error naming what is missing."""
    root = os.environ.get("PSGD_DATA")
    if not root:
        raise ReproduceError(f"needs the LIBSVM data ({', '.join(names)}): set PSGD_DATA to the "
                             f"directory holding them", 2)
    missing = [n for n in names if not (Path(root) / n).is_file()]
    if missing:
        raise ReproduceError(f"PSGD_DATA={root} lacks {', '.join(missing)}", 2)
    return Path(root)


def data_given(extra) -> bool:
    """True when the extra overrides replace the data section (tests: synthetic data)."""
    return any(s.startswith("data=") for s in extra)


def run_variants(config: Path, variants: list[Variant], out: Path, jobs: int,
                 common=(), extra=(), may_diverge=False) -> dict[str, Run]:
    """Run every variant not finished yet (``out/<name>``); return name -> Run.

    Each run gets ``common``, then the variant's own overrides, then ``extra`` (last wins).
    ``may_diverge``: a step-size search, where a run that psgd stopped as diverged (it wrote
    its summary with status ``failed``) is an outcome, not an error.
    """
    by_ranks: dict[int, list[Variant]] = {}
    for v in variants:
        by_ranks.setdefault(v.ranks, []).append(v)
    failed = []
    for ranks, group in by_ranks.items():
        points = [[w for s in [*common, *v.sets, *extra] for w in ("--set", s)] for v in group]
        rows = run_points(config, points, out, ranks=ranks, jobs=jobs,
                          names=[v.name for v in group], log_dir=out / "logs")
        failed += [f"{r['out'].name} (log {r['log']})" for r in rows if r["state"] == "failed"
                   and not (may_diverge and _diverged(r["out"]))]
    if failed:
        raise ReproduceError(f"runs failed: {', '.join(failed)}")
    return {v.name: Run(out / v.name) for v in variants}


def _diverged(out: Path) -> bool:
    summary = out / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("status") == "failed"


def plateau(run: Run, metric="subopt", frac=1 / 3) -> float:
    """The median of the last ``frac`` of the logged values: the level a run has settled at
    (robust to the noise of a stalled compressed method, unlike the last value)."""
    vals = [v for v in run.series(metric) if v is not None]
    tail = vals[-max(1, int(len(vals) * frac)):]
    return statistics.median(tail)


def md_table(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def sci(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2e}"


def write_report(out: Path, *, title, claim, setup, measured, figures, verdict, why,
                 result) -> dict:
    """REPORT.md and result.json; returns ``result`` with the verdict added."""
    figs = "\n".join(f"![{cap}]({name})\n\n*{cap}*\n" for name, cap in figures)
    text = (f"# {title}\n\n## The paper's claim\n\n{claim}\n\n## Setup\n\n{setup}\n\n"
            f"## Measured\n\n{measured}\n\n## Figures\n\n{figs}\n"
            f"## Verdict: {verdict}\n\n{why}\n")
    (out / "REPORT.md").write_text(text)
    result = {**result, "verdict": verdict}
    (out / "result.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


def setup_text(cfg, variants, common, ranks, extra) -> str:
    """The REPORT's setup section: the base config and every variant's overrides."""
    lines = [f"Base config `configs/papers/{cfg.name}`; every run is "
             f"`mpiexec -n {ranks} psgd run {cfg.name} --set ...` with:", ""]
    if common:
        lines.append(f"- every run: `{' '.join('--set ' + c for c in common)}`")
    for v in variants:
        sets = " ".join("--set " + s for s in v.sets) or "(the base config)"
        lines.append(f"- {v.label} (`runs/{v.name}`): {sets}")
    if extra:
        lines += ["", extra]
    return "\n".join(lines)
