"""`psgd validate` refuses, in one line with exit 2, every config that `psgd run` would refuse
before its first step (issue 9 item 1, issue 16), and --unset / --set KEY=~ remove keys."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from psgd import config, problems
from psgd.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICK = {
    "problem": {"name": "logistic", "l2": 0.1},
    "data": {"source": "synthetic", "n_samples": 200, "n_features": 10},
    "algorithm": {"name": "diana"},
    "compressor": {"name": "random_dithering", "levels": 1, "norm": "inf"},
    "run": {"iterations": 10},
}


def write(tmp_path, cfg, name="c.yaml"):
    p = tmp_path / name
    p.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return p


def one_line_error(capsys, args):
    """Run `psgd ARGS`; return its single stderr line (asserting exit 2 and no traceback)."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def with_(**sections):
    cfg = yaml.safe_load(yaml.safe_dump(QUICK))
    for name, value in sections.items():
        cfg[name] = value
    return cfg


# -- issue 9 item 1: the three configs validate used to accept ------------------------------


@pytest.mark.parametrize("cfg, needle", [
    (with_(problem={"name": "quadratic", "mu": 5, "L": 1}, data={}), "problem.mu: got 5"),
    (with_(problem={"name": "rosenbrock"}, data={"source": "libsvm", "path": "mushrooms"}),
     "data.source: got 'libsvm'"),
    (with_(run={"downlink": {"compressor": {"name": "top_k"}}}),
     "run.downlink.compressor: set exactly one of k and ratio"),
], ids=["quadratic mu > L", "rosenbrock with libsvm", "top_k downlink without k"])
def test_configs_run_refused_fail_in_validate(tmp_path, capsys, cfg, needle):
    assert needle in one_line_error(capsys, ["validate", write(tmp_path, cfg)])


@pytest.mark.parametrize("down, needle", [
    ({"name": "zip"}, "run.downlink.compressor.name: got 'zip'"),
    ({"name": "random_dithering", "levels": 0}, "run.downlink.compressor.levels: got 0"),
    ({"name": "top_k", "k": 3, "colour": 1}, "run.downlink.compressor.colour: unknown key"),
    ({"name": "sparse_dithering"}, "run.downlink.compressor.nu: missing"),
])
def test_downlink_errors_name_the_downlink_key(tmp_path, capsys, down, needle):
    cfg = with_(run={"downlink": {"compressor": down}})
    assert one_line_error(capsys, ["validate", write(tmp_path, cfg)]).startswith(
        f"psgd: error: {needle}")


def test_make_problem_builds_from_the_resolved_sections():
    cfg = config.validate(with_(problem={"name": "quadratic", "n_features": 6}, data={}))
    ps = problems.make_problem(cfg["problem"], cfg["data"], cfg["seed"], 3)
    assert ps.d == 6 and ps.n_workers == 3


# -- issue 16: validate -n checks what run checks before any step ----------------------------


def test_rosenbrock_with_4_workers_fails_in_validate(capsys):
    path = REPO / "configs" / "rosenbrock_diana.yaml"
    line = one_line_error(capsys, ["validate", path, "-n", "4"])
    assert "rosenbrock needs exactly 2 workers; got 4" in line and "mpiexec -n 3" in line
    assert main(["validate", str(path), "-n", "2"]) == 0


def test_missing_data_file_fails_in_validate(tmp_path, capsys):
    cfg = with_(data={"source": "libsvm", "path": "/nonexistent.txt"})
    line = one_line_error(capsys, ["validate", write(tmp_path, cfg)])
    assert "/nonexistent.txt: data file not found" in line


def test_data_file_whose_first_lines_do_not_parse_fails_in_validate(tmp_path, capsys):
    data = tmp_path / "bad.svm"
    data.write_bytes(b"1 1:1\n-1 2:x\n")
    cfg = with_(data={"source": "libsvm", "path": str(data)})
    assert f"{data}:2: unexpected byte" in one_line_error(capsys,
                                                          ["validate", write(tmp_path, cfg)])


def test_too_few_samples_and_worker_delay_need_the_worker_count(tmp_path, capsys):
    data = tmp_path / "two.svm"
    data.write_bytes(b"1 1:1\n\n-1 2:1")
    cfg = write(tmp_path, with_(data={"source": "libsvm", "path": str(data)},
                                run={"worker_delay": {2: 0.1}}))
    assert main(["validate", str(cfg)]) == 0
    capsys.readouterr()
    assert "2 samples cannot be split over 3 workers" in one_line_error(
        capsys, ["validate", cfg, "-n", "3", "--unset", "run.worker_delay"])
    assert "run.worker_delay: worker index 2 does not exist" in one_line_error(
        capsys, ["validate", cfg, "-n", "2"])


def test_unwritable_output_dir_fails_in_validate(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = one_line_error(capsys, ["validate", write(tmp_path, QUICK), "--out", blocker / "run"])
    assert "output.dir:" in line and "not a directory" in line
    assert not (blocker.parent / "run").exists()


def _launch_lines(path):
    """The `mpiexec -n N psgd run CONFIG ...` commands of a config's header comment."""
    text = path.read_text().replace("\\\n#", " ")
    for line in text.splitlines():
        m = re.search(r"mpiexec -n (\d+) psgd run (\S+)(.*)", line)
        if m:
            yield int(m.group(1)), m.group(2), shlex.split(m.group(3).split("#")[0])


def test_every_config_comment_launch_line_validates(capsys, data_dir, monkeypatch):
    monkeypatch.setenv("PSGD_DATA", str(data_dir))
    monkeypatch.chdir(REPO)
    found = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        for n, cfg, args in _launch_lines(path):
            found += 1
            code = main(["validate", cfg, "-n", str(n - 1), *args])
            assert code == 0, (path.name, n, args, capsys.readouterr().err)
    assert found >= 6  # one per config, two for rosenbrock


# -- issue 16: --unset and --set KEY=~ -------------------------------------------------------


def test_unset_removes_a_key(capsys):
    path = REPO / "configs" / "rosenbrock_diana.yaml"
    assert "algorithm.alpha: unknown key" in one_line_error(
        capsys, ["validate", path, "--set", "algorithm.name=dqgd"])
    cfg = config.load(path, ["algorithm.name=dqgd", "algorithm.alpha=~"])
    assert cfg["algorithm"]["name"] == "dqgd" and "alpha" not in cfg["algorithm"]
    for removal in (["--unset", "algorithm.alpha"], ["--set", "algorithm.alpha=~"]):
        assert main(["validate", str(path), "--set", "algorithm.name=dqgd", *removal]) == 0
        assert "name: dqgd" in capsys.readouterr().out


def test_unset_keeps_command_line_order(tmp_path):
    path = write(tmp_path, QUICK)
    assert config.load(path, ["run.iterations=~", "run.iterations=7"])["run"]["iterations"] == 7
    assert config.load(path, ["run.iterations=7", "run.iterations=~"])["run"]["iterations"] == 1000


def test_unset_of_an_absent_key_is_an_error(tmp_path, capsys):
    line = one_line_error(capsys, ["validate", write(tmp_path, QUICK), "--unset",
                                   "algorithm.alhpa"])
    assert "--unset algorithm.alhpa: algorithm.alhpa is not in the config" in line


def test_set_null_still_sets_null(tmp_path):
    path = write(tmp_path, with_(run={"target": 1e-3}))
    assert config.load(path, ["run.target=null"])["run"]["target"] is None
