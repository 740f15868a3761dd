"""Reading finished run directories (config.yaml, metrics.jsonl, summary.json) for plots and
reports: the series of a metric, and labels that say how runs differ.

A metric is taken from metrics.jsonl when the run logged it. Two are derived when the run
did not log them but their value is exact:

* ``rel_subopt`` = subopt / subopt at step 0 (needs the step-0 record: every run logs it);
* ``epoch`` for a synchronous run: every step each worker processes its whole shard (full
  gradients, one epoch per step) or ``batch_size`` samples (``n_workers * batch_size / m``
  epochs per step).

``bits`` is ``bits_up + bits_down`` and ``payload_bits`` is ``payload_bits_up +
payload_bits_down`` (headers excluded), where logged.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml


class RunDirError(ValueError):
    """A run directory or metric that cannot be used: the one-line message says why."""


class Run:
    def __init__(self, path):
        self.path = Path(path)
        self.name = str(path)
        if not self.path.is_dir():
            raise RunDirError(f"{self.name}: no such run directory")
        metrics = self.path / "metrics.jsonl"
        if not metrics.is_file():
            raise RunDirError(f"{self.name}: no metrics.jsonl (not a psgd run directory, or the "
                              f"run has not logged yet)")
        self.records = []
        lines = metrics.read_text().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                # the last line of a run still writing may be partial; anything else is damage
                if n == len(lines):
                    break
                raise RunDirError(f"{metrics}: line {n} is not JSON") from None
        if not self.records:
            raise RunDirError(f"{self.name}: metrics.jsonl has no records")
        cfg = self.path / "config.yaml"
        self.config = yaml.safe_load(cfg.read_text()) if cfg.is_file() else {}
        summ = self.path / "summary.json"
        self.summary = json.loads(summ.read_text()) if summ.is_file() else {}

    # -- metrics --------------------------------------------------------------------------------

    def logged(self) -> list[str]:
        """The metric names the run logged (in its first record's order)."""
        return list(self.records[0])

    def available(self) -> list[str]:
        names = self.logged()
        for extra in ("bits", "payload_bits", "rel_subopt", "epoch"):
            if extra not in names and self._derivable(extra):
                names.append(extra)
        return names

    def _derivable(self, name) -> bool:
        r0 = self.records[0]
        if name == "bits":
            return "bits_up" in r0 and "bits_down" in r0
        if name == "payload_bits":
            return "payload_bits_up" in r0 and "payload_bits_down" in r0
        if name == "rel_subopt":
            return "subopt" in r0 and r0.get("step") == 0 and r0["subopt"] > 0
        if name == "epoch":
            return self._epochs_per_step() is not None
        return False

    def _epochs_per_step(self):
        """Exact epochs per server step for a synchronous run, else None."""
        run = self.config.get("run", {})
        alg = self.config.get("algorithm", {})
        if run.get("mode", "sync") != "sync":
            return None
        batch = alg.get("batch_size")
        if batch is None:
            return 1.0
        n, m = self.summary.get("n_workers"), _n_samples(self)
        return None if not (n and m) else n * batch / m

    def series(self, name) -> list[float]:
        """The metric's value at every logged record (same length as ``self.records``)."""
        r0 = self.records[0]
        if name in r0:
            return [r.get(name) for r in self.records]
        if not self._derivable(name):
            raise RunDirError(f"{self.name}: has no metric {name!r}; it has: "
                              f"{', '.join(self.available())}")
        if name == "bits":
            return [r["bits_up"] + r["bits_down"] for r in self.records]
        if name == "payload_bits":
            return [r["payload_bits_up"] + r["payload_bits_down"] for r in self.records]
        if name == "rel_subopt":
            return [r["subopt"] / r0["subopt"] for r in self.records]
        eps = self._epochs_per_step()
        return [r["step"] * eps for r in self.records]

    @property
    def log_every(self):
        return self.config.get("run", {}).get("log_every")


def _n_samples(run: Run):
    data = run.config.get("data", {})
    return data.get("n_samples") if data.get("source") == "synthetic" else None


def load_runs(paths) -> list[Run]:
    return [Run(p) for p in paths]


# -- labels -------------------------------------------------------------------------------------


def flatten(cfg, prefix="") -> dict:
    out = {}
    for k, v in (cfg or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


#: keys that differ between runs without saying anything about the method
IGNORED_KEYS = ("output.dir",)


def differing(runs: list[Run]) -> list[str]:
    """The config keys whose values are not the same in every run, in config order."""
    flats = [flatten(r.config) for r in runs]
    keys = []
    for f in flats:
        keys += [k for k in f if k not in keys]
    return [k for k in keys if k not in IGNORED_KEYS
            and len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1]


def labels(runs: list[Run]) -> list[str]:
    """One label per run from what differs between the configs: ``norm=inf, block_size=25``
    (the shortest key suffix that is still unique); the directory name if nothing differs."""
    keys = differing(runs)
    if len(runs) < 2 or not keys:
        return [r.path.name or r.name for r in runs]
    short = _short_names(keys)
    flats = [flatten(r.config) for r in runs]
    # a key a run's config lacks (dqgd has no alpha) says nothing about that run: leave it out
    return [", ".join(f"{short[k]}={_fmt(f[k])}" for k in keys if k in f) for f in flats]


def _short_names(keys):
    out = {}
    for k in keys:
        if k.endswith(".name"):  # algorithm.name=dqgd reads better as algorithm=dqgd
            out[k] = k[:-len(".name")]
            continue
        parts = k.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if sum(1 for other in keys if other.endswith("." + cand) or other == cand) == 1:
                out[k] = cand
                break
        else:
            out[k] = k
    return out


def _fmt(v):
    if v is None:
        return "none"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)
