"""A short soak (benchmarks/soak.py, 10 s instead of 120): a real server under valid and hostile traffic at
once, a promotion half-way; nothing valid fails, every hostile client gets its answer in time, memory stays."""

from __future__ import annotations

from benchmarks.soak import GRACE_S, soak


def test_a_short_soak_answers_everything_and_keeps_its_memory() -> None:
    r = soak(seconds=10, clients=4, hostile_each=1)
    counts = r["counts"]
    assert set(counts["valid"]) == {200} and counts["valid"][200] > 100, counts["valid"]
    assert r["valid_failed"] == 0, r["failures"]
    assert set(counts["slow_body"]) == {408} and set(counts["slow_header"]) == {408}, counts
    assert set(counts["oversized"]) == {413} and set(counts["broken"]) == {422}, counts
    assert set(counts["idle"]) <= {0, 408} and counts["idle"], counts  # closed, with or without a 408
    assert counts["slow_body"][408] >= 3 and counts["slow_header"][408] >= 3  # each ~1 s: several rounds
    assert r["late"] == {}, f"answers later than their limit + {GRACE_S} s: {r['late']}"
    assert r["versions"]["before"].keys() == {"v0001"} and r["versions"]["after_settle"].keys() == {"v0002"}
    assert r["versions"]["after_settle"]["v0002"] > 10  # the promoted model answered, hot-reloaded
    assert r["rss_mb"]["end"] <= 3 * r["rss_mb"]["start"], r["rss_mb"]
    assert r["tracebacks"] == 0
