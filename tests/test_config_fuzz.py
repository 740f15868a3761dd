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
