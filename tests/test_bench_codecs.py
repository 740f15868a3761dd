"""psgd bench codecs (small d) and the psgd bench dispatcher."""

import json

from psgd import bench, bench_codecs


def test_codecs_table_and_json(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_codecs.main(["--dim", "2000", "--repeats", "1", "--compressors",
                              "sign,top_k:ratio=0.05,rand_k:k=20;send_indices=true",
                              "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "np.copyto" in text and "enc/twin" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["compressor"] for r in rows] == ["sign", "top_k", "rand_k"]
    assert rows[2]["params"] == {"k": 20, "send_indices": True}
    for r in rows:
        assert r["twin_same_bytes"] and r["encode_gbs"] > 0 and r["twin_decode_add_gbs"] > 0
    assert abs(rows[0]["bits_per_coord"] - (64 + 32 + 2000) / 2000) < 1e-12
    assert rows[1]["err"] <= rows[1]["theory"]


def test_codecs_bad_arguments(capsys):
    assert bench_codecs.main(["--dim", "0"]) == 2
    assert bench_codecs.main(["--dim", "100", "--compressors", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_dispatch_unknown_benchmark(capsys):
    assert bench.main("nope", []) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "codecs, frontier, runtime" in err


def test_default_settings_are_every_example_and_a_bare_name_its_first():
    from psgd.compressors import compressor_classes

    settings = bench_codecs._settings(None, 10**6)
    expect = [dict(name=n, **p) for n, cls in sorted(compressor_classes().items())
              for p in cls.examples]
    assert [cfg for cfg, _ in settings] == expect and not any(e for _, e in settings)
    first = compressor_classes()["top_k"].examples[0]
    assert bench_codecs._settings("top_k", 100) == [(dict(name="top_k", **first), True)]


def test_examples_over_the_budget_are_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    """At a large --dim an example predicted to be too slow is skipped, not run for minutes."""
    assert 0 < bench_codecs.predicted_encode_s({"name": "sign"}, 10**6, 0) < 60
    monkeypatch.setattr(bench_codecs, "predicted_encode_s", lambda cfg, d, seed: 1e9)
    out = tmp_path / "rows.json"
    assert bench_codecs.main(["--dim", "20000", "--repeats", "1", "--no-twins",
                              "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows and all("predicted to take 1e+09 s" in r["error"] for r in rows)
    assert "name it with --compressors" in capsys.readouterr().out
