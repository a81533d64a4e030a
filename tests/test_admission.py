"""fiboserver.worker.admission: the pure policy behind 503 overloaded, on a fake clock."""

from __future__ import annotations

import pytest

from fiboserver.worker.admission import Admission, Pacer, ProbeLane, Verdict


def test_starts_while_threads_are_free_then_queues_then_sheds() -> None:
    # 2 threads, 0.1 s per request, a 1 s deadline: 2 * 1 / 0.1 = 20 may wait.
    adm: Admission[int] = Admission(2, deadline=1.0, initial_service=0.1)
    assert [adm.offer(i, 0.0) for i in range(2)] == [Verdict.START, Verdict.START]
    assert adm.running == 2
    assert adm.capacity() == 20
    assert [adm.offer(i, 0.0) for i in range(20)] == [Verdict.QUEUED] * 20
    assert adm.offer(99, 0.0) is Verdict.SHED
    assert adm.waiting == 20 and adm.running == 2


def test_the_queue_bound_is_what_the_threads_start_within_the_deadline() -> None:
    # 2 threads at 0.125 s each start 8 requests in half a second.
    assert Admission(2, deadline=0.5, initial_service=0.125).capacity() == 8
    # No service time to go by: nothing is shed for the queue's length.
    unmeasured: Admission[int] = Admission(1, deadline=0.5, initial_service=0.0)
    assert unmeasured.offer(0, 0.0) is Verdict.START
    assert {unmeasured.offer(i, 0.0) for i in range(10_000)} == {Verdict.QUEUED}


def test_queued_items_start_in_order_as_threads_free_up() -> None:
    adm: Admission[str] = Admission(1, deadline=1.0, initial_service=0.1)
    assert adm.offer("a", 0.0) is Verdict.START
    assert adm.offer("b", 0.0) is Verdict.QUEUED
    assert adm.offer("c", 0.1) is Verdict.QUEUED
    assert adm.take(0.2) == (None, [])  # no thread free yet
    adm.done(0.2)
    assert adm.take(0.2) == ("b", [])
    assert adm.running == 1
    adm.done(0.1)
    assert adm.take(0.3) == ("c", [])
    assert adm.take(0.3) == (None, [])


def test_an_item_that_waited_past_the_deadline_is_shed_not_started() -> None:
    adm: Admission[str] = Admission(1, deadline=1.0, initial_service=0.01)
    adm.offer("running", 0.0)
    adm.offer("late", 0.0)
    adm.offer("in time", 0.5)
    adm.done(1.2)
    started, expired = adm.take(1.2)
    assert (started, expired) == ("in time", ["late"])


def test_an_item_that_waited_exactly_the_deadline_still_starts() -> None:
    adm: Admission[str] = Admission(1, deadline=1.0, initial_service=0.01)
    adm.offer("running", 0.0)
    adm.offer("on time", 0.25)
    adm.done(1.25)
    assert adm.take(1.25) == ("on time", [])  # shed only past the deadline


def test_queue_bound_follows_the_measured_service_time() -> None:
    adm: Admission[int] = Admission(4, deadline=1.0, initial_service=0.01, weight=0.5)
    assert adm.capacity() == 400
    for _ in range(4):
        adm.offer(0, 0.0)
    for _ in range(10):  # requests now take 0.1 s each
        adm.done(0.1)
        adm.offer(0, 0.0)
    assert adm.service == pytest.approx(0.1, rel=0.01)
    assert adm.capacity() == 40  # 4 threads * 1 s / 0.1 s


def test_cancel_frees_a_thread_without_counting_a_service_time() -> None:
    adm: Admission[str] = Admission(1, deadline=1.0, initial_service=0.05)
    adm.offer("a", 0.0)
    adm.offer("b", 0.0)
    adm.done(0.05)
    assert adm.take(0.1) == ("b", [])
    adm.cancel()  # b's client had left
    assert adm.running == 0 and adm.service == pytest.approx(0.05)
    assert adm.offer("c", 0.2) is Verdict.START


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError):
        Admission(0)


def test_pacer_allows_its_share_of_cpu_and_makes_the_rest_wait() -> None:
    pacer = Pacer(0.0, share=0.05, burst=0.01)
    assert pacer.ready(0.0) and pacer.wait(0.0) == 0.0
    pacer.spend(0.015)  # a batch overran the burst by 5 ms of CPU
    assert not pacer.ready(0.0)
    # 5 ms of debt at 5 % of each second: 0.1 s until the budget is positive again.
    assert pacer.wait(0.0) == pytest.approx(0.1, abs=1e-3)
    assert not pacer.ready(0.09)
    assert pacer.ready(0.11)


def test_a_budget_spent_to_the_last_waits_and_the_wait_is_enough() -> None:
    pacer = Pacer(0.0, share=0.05, burst=0.01)
    pacer.spend(0.01)
    assert not pacer.ready(0.0)  # nothing left is not "some left"
    assert pacer.wait(0.0) > 0.0
    pacer.spend(0.005)
    # Woken after exactly the wait it was given, the loop finds the budget ready:
    # no second, near-zero wait for a rounding error.
    waited = pacer.wait(0.0)
    assert pacer.ready(waited)
    assert pacer.wait(waited) == 0.0


def test_pacer_saves_up_no_more_than_its_burst() -> None:
    pacer = Pacer(0.0, share=0.05, burst=0.01)
    assert pacer.ready(100.0)  # a long quiet time refills to the burst only
    pacer.spend(0.011)
    assert not pacer.ready(100.0)


def test_the_probe_lane_holds_16_and_a_place_frees_as_a_probe_leaves() -> None:
    # docs/worker.md: beyond 16 probes in the lane the rest are admitted like others.
    lane = ProbeLane()
    assert [lane.enter() for _ in range(17)] == [True] * 16 + [False]
    lane.leave()
    assert (lane.enter(), lane.enter()) == (True, False)
    for _ in range(16):
        lane.leave()
    assert [lane.enter() for _ in range(17)] == [True] * 16 + [False]
