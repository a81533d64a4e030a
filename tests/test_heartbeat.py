"""fiboserver.worker.heartbeat: the worker's heartbeat to the master, at its
first loop turn and then once a second, not at every turn."""

from __future__ import annotations

from fiboserver.worker.heartbeat import Heartbeat

# Far from 0: a monotonic clock's value on a machine that has been up a while.
BOOTED = 86_400.0


def test_the_first_turn_beats() -> None:
    assert Heartbeat().due(BOOTED)
    assert Heartbeat().due(0.5)  # whatever the clock says


def test_then_once_a_second_not_at_every_turn() -> None:
    beat = Heartbeat()
    turns = [BOOTED + t for t in (0.0, 0.001, 0.5, 0.999, 1.0, 1.2, 1.999, 2.0, 3.5)]
    assert [t - BOOTED for t in turns if beat.due(t)] == [0.0, 1.0, 2.0, 3.5]


def test_the_interval_is_counted_from_the_last_beat() -> None:
    beat = Heartbeat(interval=0.25)
    # Binary fractions, so that the differences are exact.
    assert [beat.due(BOOTED + t) for t in (0.0, 0.125, 0.375, 0.5, 0.625)] == [
        True, False, True, False, True,
    ]  # fmt: skip
