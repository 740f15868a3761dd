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


def flaky_target(path, overrides):
    """A loader with two bugs: a KeyError on some inputs and a hang on others."""
    text = open(path, "rb").read()
    if len(text) % 7 == 0:
        raise KeyError("boom")
    if len(text) % 7 == 1:
        time.sleep(30)
    return "accepted"


def test_harness_reports_exceptions_and_hangs():
    stats = config_fuzz.run(cases=15, seed=3, time_limit=1.0,
                            target="tests.test_config_fuzz:flaky_target")
    kinds = {f["status"] for f in stats["failures"]}
    assert stats["cases"] == 15 and {"exception", "hang"} <= kinds, stats
