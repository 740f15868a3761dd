"""A newcomer's way in (issue 16): psgd bench and psgd list explain themselves, help texts
cite only what is in the repository, and README command 1 installs what the figures need."""

import re
import tomllib
from pathlib import Path

import pytest

from psgd.bench import BENCHMARKS
from psgd.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args", [["bench"], ["bench", "--help"]])
def test_bench_lists_every_benchmark_with_one_line(capsys, args):
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's --help
        code = exc.code
    out = capsys.readouterr().out
    assert code == 0
    for name in BENCHMARKS:
        lines = [line for line in out.splitlines() if re.match(rf"\s+{name}\s+\S", line)]
        assert len(lines) == 1, (name, out)


def test_list_shows_doc_range_and_default(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    top_k = out.split("  top_k [biased]:")[1]
    line = next(l for l in top_k.splitlines() if l.strip().startswith("ratio"))
    assert "k = ceil(ratio * d)" in line and "allowed: null or a number in (0, 1]" in line \
        and "default None" in line
    assert "sparse_dithering [deterministic: biased; randomized: unbiased]" in out
    for section in ("run:", "data:", "seed:", "output:"):
        assert f"  {section}" in out


def test_list_name_shows_one_entry(capsys):
    assert main(["list", "top_k"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("  top_k [biased]:") and "random_dithering" not in out
    assert main(["list", "no_such"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no entry named 'no_such'" in err[0]


def _help_texts(capsys):
    for args in (["--help"], ["run", "--help"], ["validate", "--help"], ["list", "--help"],
                 ["bench", "--help"]) + tuple(["bench", name, "--help"] for name in BENCHMARKS):
        try:
            main(args)
        except SystemExit:
            pass
        yield " ".join(args), capsys.readouterr().out


def test_help_texts_cite_only_files_in_the_repository(capsys):
    for args, text in _help_texts(capsys):
        assert text.strip(), args
        for name in re.findall(r"[\w./-]+\.(?:md|yaml|py|txt|rst)\b", text):
            assert (REPO / name).exists() or (REPO / "configs" / name).exists(), (args, name)


def test_readme_command_1_installs_the_plotting_library():
    readme = (REPO / "README.md").read_text()
    assert 'pip install ".[mpich]" && mpiexec -n 5 psgd run configs/quickstart.yaml' in readme
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert any(dep.startswith("matplotlib") for dep in extras["mpich"])
    assert '".[plot]"' in readme
