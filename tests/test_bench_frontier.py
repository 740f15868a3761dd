"""``psgd bench frontier`` (psgd.bench_frontier.main): a quick run writes the table, JSON and PNG."""

import json

import pytest

from psgd import bench_frontier


def test_frontier_small(tmp_path, capsys):
    out, js = tmp_path / "f.png", tmp_path / "f.json"
    pytest.importorskip("matplotlib")
    code = bench_frontier.main(["--dim", "16", "--trials", "2", "--only",
                                "sparse_dithering,spherical,haar_sketch,no_such",
                                "--out", str(out), "--json", str(js)])
    assert code == 0
    text = capsys.readouterr().out
    assert "bits/coord" in text and "ACA bits" in text and "spherical" in text
    rows = json.loads(js.read_text())["rows"]
    assert {r["compressor"] for r in rows} == {"sparse_dithering", "spherical", "haar_sketch"}
    for r in rows:
        # no compressor beats the uncertainty principle: alpha >= 4^(-bits/coord)
        assert r["alpha"] >= r["alpha_min_UP"]
    assert out.stat().st_size > 1000


def test_frontier_bad_args():
    assert bench_frontier.main(["--dim", "1"]) == 2


def _row(name, params, bits, alpha):
    return {"compressor": name, "params": params, "bits_per_coord": bits, "alpha": alpha}


def test_frontier_figure_holds_every_point_with_one_style_per_compressor():
    """Issue 16: top_k at 20.5 bits, identity at 32 / 64 bits (alpha tiny or 0) stay inside
    the axes, each compressor has its own colour and marker, the legend is beside the axes."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    rows = [_row("top_k", {"ratio": r}, 41 * r, 1 - r) for r in (0.01, 0.25, 0.5)]
    rows += [_row("identity", {"dtype": "float32"}, 32.0, 3e-16),
             _row("identity", {"dtype": "float64"}, 64.0, 0.0),
             _row("rand_k", {"ratio": 0.5}, 16.0, 0.9),
             _row("spherical", {"alpha": 0.5, "block_size": 4}, 9.4, 0.31),
             _row("spherical", {"alpha": 0.3, "block_size": 8}, 5.4, 0.24),
             _row("spherical", {"alpha": 0.9, "block_size": 64}, 2.0, 1.3)]
    fig = bench_frontier.figure(rows, 64)
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    styles = {}
    for line in ax.get_lines():
        name = line.get_label().split(" ")[0]
        if name.endswith(":"):             # the UP / ACA bounds
            continue
        for x, y in zip(line.get_xdata(), line.get_ydata()):
            assert x0 < x < x1 and y0 <= y < y1, (line.get_label(), x, y)
        styles.setdefault(name, set()).add((line.get_color(), line.get_marker()))
    assert set(styles) == {"top_k", "identity", "rand_k", "spherical"}
    assert all(len(s) == 1 for s in styles.values()), styles       # one style per compressor
    assert len({s.pop() for s in styles.values()}) == 4           # ... and no two share one
    assert len(set(bench_frontier.COLOURS)) == len(bench_frontier.COLOURS)
    assert len(set(bench_frontier.MARKERS)) == len(bench_frontier.MARKERS)
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1          # beside the axes, not over the data
    plt.close(fig)


def test_frontier_help_cites_nothing_outside_the_repository(capsys):
    with pytest.raises(SystemExit):
        bench_frontier.main(["--help"])
    text = capsys.readouterr().out
    assert "papers.md" not in text and "Safaryan" in text
