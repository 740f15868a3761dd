"""Config loading: every malformed config is exit 2 and one line naming the key."""

import subprocess
import sys

import pytest
import yaml

from psgd import config
from psgd.cli import main
from psgd.errors import ConfigError

GOOD = {
    "seed": 1,
    "problem": {"name": "logistic", "l2": 0.1},
    "data": {"source": "synthetic", "n_samples": 200, "n_features": 10},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf"},
    "run": {"iterations": 10},
}


def write(tmp_path, obj, name="c.yaml"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return p


def with_(section, **kw):
    cfg = yaml.safe_load(yaml.safe_dump(GOOD))
    cfg.setdefault(section, {}).update(kw)
    return cfg


BAD = [
    # (config or raw YAML text, extra --set overrides, text the one line must contain)
    ({**GOOD, "optimizer": {}}, [], "optimizer: unknown section"),
    (with_("run", iteratons=5), [], "run.iteratons: unknown key"),
    (with_("compressor", name="zip"), [], "compressor.name: got 'zip'"),
    (with_("compressor", levels=0), [], "compressor.levels: got 0"),
    (with_("compressor", norm=3), [], "compressor.norm: got 3"),
    (with_("compressor", blocksize=3), [], "compressor.blocksize: unknown key"),
    (with_("algorithm", stepsize=-1), [], "algorithm.stepsize: got -1"),
    (with_("algorithm", stepsize="fast"), [], "algorithm.stepsize: got 'fast'"),
    (with_("algorithm", alpha=2), [], "algorithm.alpha: got 2"),
    (with_("algorithm", name="adam"), [], "algorithm.name: got 'adam'"),
    (with_("run", mode="semi"), [], "run.mode: got 'semi'"),
    (with_("run", max_staleness=-1, mode="async"), [], "run.max_staleness: got -1"),
    (with_("run", max_staleness=3), [], "run.max_staleness: got 3"),
    (with_("run", iterations=0), [], "run.iterations: got 0"),
    (with_("run", timeout_s="soon"), [], "run.timeout_s: got 'soon'"),
    (with_("run", worker_delay={"slow": 1}), [], "run.worker_delay: got"),
    (with_("run", worker_delay=[1, 2]), [], "run.worker_delay: got"),
    (with_("problem", l2=-0.1), [], "problem.l2: got -0.1"),
    (with_("problem", name="svm"), [], "problem.name: got 'svm'"),
    (with_("data", source="csv"), [], "data.source: got 'csv'"),
    (with_("data", source="libsvm"), [], "data.path"),
    ({**GOOD, "seed": "abc"}, [], "seed: got 'abc'"),
    ({**GOOD, "algorithm": {"name": "gd"}}, [], "compressor.name: got 'random_dithering'"),
    (with_("algorithm", name="ef21", async_form="direct"), [], "algorithm.async_form: got 'direct'"),
    ({**GOOD, "algorithm": {"name": "ef21"}, "compressor": {"name": "rounding", "resolution": 0.1}},
     [], "which is no contraction"),
    ({**GOOD, "compressor": {"name": "top_k", "ratio": 0.1}}, [], "which is biased"),
    ("run: {iterations: [1, 2\n", [], "not valid YAML"),
    ("- just\n- a list\n", [], "config: got a list"),
    (GOOD, ["run.iterations"], "expected key.path=value"),
    (GOOD, ["run.iterations=-3"], "run.iterations: got -3"),
    (GOOD, ["compressor.levels=two"], "compressor.levels: got 'two'"),
    (GOOD, ["run.iterations.x=1"], "run.iterations is"),
]


@pytest.mark.parametrize("cfg,sets,needle", BAD, ids=[b[2][:40] for b in BAD])
def test_malformed_config_is_one_line_exit_2(tmp_path, capsys, cfg, sets, needle):
    path = write(tmp_path, cfg)
    args = ["validate", str(path)]
    for s in sets:
        args += ["--set", s]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


def test_at_least_15_malformed_configs():
    assert len(BAD) >= 15


def test_missing_config_file(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_resolved_config_fills_every_default(tmp_path):
    cfg = config.load(write(tmp_path, GOOD))
    assert set(cfg) == set(config.SECTIONS)
    assert cfg["run"]["mode"] == "sync" and cfg["run"]["log_every"] == 100
    assert cfg["compressor"] == {"name": "random_dithering", "levels": 1, "norm": "inf",
                                 "block_size": None, "encoding": "dense"}
    # the resolved config is a fixed point: validating it again changes nothing
    assert config.validate(yaml.safe_load(config.dump(cfg))) == cfg


def test_overrides_parse_yaml_values(tmp_path):
    cfg = config.load(write(tmp_path, GOOD), ["run.iterations=7", "compressor.norm=2",
                                              "run.worker_delay={0: 0.5}", "run.target=1e-6"])
    assert cfg["run"]["iterations"] == 7
    assert cfg["compressor"]["norm"] == "2"
    assert cfg["run"]["worker_delay"] == {0: 0.5}
    assert cfg["run"]["target"] == 1e-6


def test_load_does_not_mutate_input():
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    before = yaml.safe_dump(raw)
    config.validate(raw)
    config.apply_overrides(raw, ["run.iterations=3"])
    assert yaml.safe_dump(raw) == before


def test_every_shipped_config_validates():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    found = sorted(root.glob("*.yaml"))
    if not found:
        pytest.skip("configs/ not beside the tests (installed-package run)")
    for path in found:
        config.load(path)


def test_config_error_is_value_error():
    with pytest.raises(ValueError):
        config.validate({"run": {"mode": "nope"}})
    with pytest.raises(ConfigError):
        config.validate({"run": {"mode": "nope"}})


def test_list_names_every_component(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("identity", "random_dithering", "diana", "dqgd", "gd", "ef", "ef21",
                 "logistic", "least_squares"):
        assert name in out


def test_run_with_one_rank_explains_how_to_launch(tmp_path):
    path = write(tmp_path, GOOD)
    proc = subprocess.run([sys.executable, "-m", "psgd", "run", str(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "at least 2 MPI ranks" in lines[0] and "mpiexec -n" in lines[0]


def test_source_checkout_imports_like_the_installed_package():
    """`python -m psgd` run in the repository root imports the source tree: it must still find
    psgd.server and psgd.workers (which setup.py maps from server/ and workers/)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    if not (repo / "setup.py").exists():
        pytest.skip("not run from a source checkout")
    code = "import psgd, psgd.server.loop, psgd.workers.loop; print(psgd.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(str(repo))
