"""The config loader as a fuzz target: a bounded run in CI, and the harness itself catches
tracebacks and hangs (a harness that cannot fail would prove nothing)."""

import time

from psgd import config_fuzz


def test_config_fuzz_bounded_run_has_no_failures():
    stats = config_fuzz.run(cases=100, seed=12, time_limit=1.0, mem_limit_mb=200)
    assert stats["cases"] == 100 and stats["failures"] == [], stats["failures"][:3]
    assert stats["accepted"] > 10 and stats["rejected"] > 50


def test_mutations_are_deterministic_and_varied():
    docs = config_fuzz.seed_documents()
    assert len(docs) >= 5  # the repository's configs
    cases = [config_fuzz.mutate(docs[0], __import__("random").Random(f"0:{i}"))
             for i in range(200)]
    again = [config_fuzz.mutate(docs[0], __import__("random").Random(f"0:{i}"))
             for i in range(200)]
    assert cases == again and len({op for _, _, op in cases}) >= 12


_calls = []


def flaky_target(path, overrides):
    """A loader with two bugs: in each child process its first call raises a KeyError and its
    second hangs (decided by call count, not by the mutated text, so both bugs always show)."""
    _calls.append(path)
    if len(_calls) == 1:
        raise KeyError("boom")
    time.sleep(30)


def test_harness_reports_exceptions_and_hangs():
    stats = config_fuzz.run(cases=15, seed=3, time_limit=1.0,
                            target="tests.test_config_fuzz:flaky_target")
    kinds = {f["status"] for f in stats["failures"]}
    assert stats["cases"] == 15 and {"exception", "hang"} <= kinds, stats


def test_two_lines_in_one_read_are_both_seen():
    """The harnesses' pipe reader: a child that answers with two lines in one write and then
    works on (sleeps) must have both lines read at once. select() and a buffered readline()
    (what both harnesses did) return the first only and then time out, which they took for a
    hang, or for a child that died before its first case (a load-dependent failure above)."""
    import subprocess
    import sys

    from psgd.fuzz.pipe import LineReader

    child = subprocess.Popen([sys.executable, "-c", "import os, time; "
                              "os.write(1, b'done 1\\nstart 2\\n'); time.sleep(30)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        lines = LineReader(child.stdout)
        assert lines.readline(20) == "done 1\n"
        t0 = time.monotonic()
        assert lines.readline(5) == "start 2\n"
        assert time.monotonic() - t0 < 1
        assert lines.readline(0.2) is None  # nothing more yet: a timeout, not the end
    finally:
        child.kill()
        child.wait()
    assert lines.readline(5) == ""  # the end of the pipe
