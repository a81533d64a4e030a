"""The result cache: LRU within a byte budget, hit/miss records, disabled mode, threads."""

from __future__ import annotations

import random
import sys
import threading
from decimal import Decimal
from typing import Any

import pytest
from flask import Flask

from fiboserver.app import create_app, heap
from fiboserver.app.cache import LOGGED_VALUE_CHARS, FiboCache, elide
from fiboserver.config import parse_config
from tests.support.fibref import fib_table
from tests.support.logcapture import JsonCapture


def make_app(**config: Any) -> Flask:
    return create_app(parse_config(config, "test.yaml"))


def cache_of(app: Flask) -> FiboCache:
    cache = app.extensions["fibo_cache"]
    assert isinstance(cache, FiboCache)
    return cache


def fib_digits(keep: set[int]) -> dict[int, str]:
    """Decimal digits of F(n) for n in `keep` (Decimal: no 4300-digit limit)."""
    return {n: str(Decimal(v)) for n, v in fib_table(keep).items()}


def result_digits(app_client: Any, path: str) -> str:
    # buffered: the client closes the response as a WSGI server does after
    # sending it, which is when the `end` record is written.
    resp = app_client.get(path, buffered=True)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:200]
    text: str = resp.get_data(as_text=True)
    # {"result": <digits>} -- read the digits without converting through int.
    prefix = '{"result": '
    assert text.startswith(prefix), text[:50]
    return text[len(prefix) :].rstrip("}\n ")


# -- the extension on its own --------------------------------------------------------


def unit_size(cache_budget: int = 10**9) -> int:
    """Accounted bytes of one entry with a 1000-digit value."""
    probe = FiboCache(max_bytes=cache_budget)
    probe.put(5000, "7" * 1000)
    return probe.size_bytes


def test_get_put_len_size() -> None:
    cache = FiboCache(max_bytes=10**6)
    assert len(cache) == 0 and cache.size_bytes == 0 and cache.max_bytes == 10**6
    assert cache.get(10) is None
    cache.put(10, "55")
    assert cache.get(10) == "55"
    assert len(cache) == 1
    assert cache.size_bytes >= len("55")
    # Replacing a key keeps one entry and does not double-count it.
    size = cache.size_bytes
    cache.put(10, "55")
    assert len(cache) == 1 and cache.size_bytes == size


def test_least_recently_used_is_evicted_first() -> None:
    one = unit_size()
    assert one >= 1000, "a 1000-digit value must cost at least its 1000 characters"
    cache = FiboCache(max_bytes=3 * one + one // 2)  # room for three entries
    for n in (5001, 5002, 5003):
        cache.put(n, "7" * 1000)
    assert len(cache) == 3
    assert cache.get(5001) == "7" * 1000  # 5001 is now the most recently used
    cache.put(5004, "7" * 1000)
    assert cache.get(5002) is None, "5002 was the least recently used"
    assert cache.get(5001) is not None and cache.get(5003) is not None
    assert cache.get(5004) is not None
    assert len(cache) == 3
    assert cache.size_bytes <= cache.max_bytes


def test_value_larger_than_budget_is_not_kept() -> None:
    cache = FiboCache(max_bytes=5000)
    cache.put(1, "1")
    cache.put(2, "9" * 20000)
    assert cache.size_bytes <= 5000
    assert cache.get(2) is None


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per time the cache gives free pages back (heap.release_free_pages)."""
    calls: list[int] = []
    monkeypatch.setattr(heap, "release_free_pages", lambda: calls.append(len(calls)))
    return calls


def test_an_entry_that_exactly_fills_the_budget_evicts_nothing() -> None:
    one = unit_size()
    cache = FiboCache(max_bytes=2 * one)
    cache.put(5001, "7" * 1000)
    cache.put(5002, "7" * 1000)
    assert len(cache) == 2 and cache.size_bytes == cache.max_bytes
    single = FiboCache(max_bytes=one)
    single.put(5001, "7" * 1000)
    assert len(single) == 1


def test_a_value_of_a_page_or_more_is_charged_one_page_more() -> None:
    """The module's accounting rule: a value object of 4096 bytes or more is charged
    4096 bytes more, for the partly used pages the C allocator keeps around it."""
    page = 4096
    # A compact ASCII str is a fixed header and one byte per character.
    at_page = "7" * (page - sys.getsizeof(""))
    assert sys.getsizeof(at_page) == page

    def cost(digits: str) -> int:
        probe = FiboCache(max_bytes=10**9)
        probe.put(1, digits)
        return probe.size_bytes

    assert cost(at_page) - cost(at_page[:-1]) == 1 + page
    assert cost(at_page + "7") - cost(at_page) == 1


def test_every_entry_one_put_evicts_counts_towards_giving_pages_back(released: list[int]) -> None:
    """Free pages go back to the system once evictions have freed 1/64 of the
    budget: here one entry is less than that, the two one put evicts are more."""
    one = unit_size()
    cache = FiboCache(max_bytes=96 * one)  # 1/64 of it is 1.5 entries
    for n in range(5001, 5097):
        cache.put(n, "7" * 1000)
    assert len(cache) == 96 and released == []
    cache.put(9000, "7" * 2000)  # costs more than one entry, less than two
    assert len(cache) == 95 and released == [0]


def test_pages_go_back_when_evictions_reach_exactly_1_64_of_the_budget(released: list[int]) -> None:
    one = unit_size()
    cache = FiboCache(max_bytes=64 * one)
    for n in range(5001, 5066):  # the 65th evicts the first
        cache.put(n, "7" * 1000)
    assert released == [0]
    # A byte short of it (the same entries, 64 bytes more budget) gives nothing back.
    short = FiboCache(max_bytes=64 * (one + 1))
    for n in range(5001, 5066):
        short.put(n, "7" * 1000)
    assert len(short) == 64 and released == [0]


def test_after_pages_go_back_the_count_starts_from_nothing(released: list[int]) -> None:
    """1/64 of this budget is one entry and a byte: the second eviction gives
    pages back, then the third (one entry since) does not, the fourth does."""
    one = unit_size()
    cache = FiboCache(max_bytes=64 * (one + 1))
    for n in range(5001, 5065):
        cache.put(n, "7" * 1000)
    for n, after in ((6001, []), (6002, [0]), (6003, [0]), (6004, [0, 1])):
        cache.put(n, "7" * 1000)
        assert released == after, n


def test_evictions_count_towards_giving_pages_back_across_puts(released: list[int]) -> None:
    """One entry evicted per put: every second put has freed 1/64 of the budget."""
    one = unit_size()
    cache = FiboCache(max_bytes=96 * one)
    for n in range(5001, 5097):
        cache.put(n, "7" * 1000)
    for n, after in ((6001, []), (6002, [0]), (6003, [0]), (6004, [0, 1])):
        cache.put(n, "7" * 1000)
        assert released == after, n


def test_init_app_registers_in_extensions() -> None:
    app = Flask("cache-test")
    cache = FiboCache(max_bytes=12345)
    cache.init_app(app)
    assert app.extensions["fibo_cache"] is cache
    assert cache.max_bytes == 12345


def test_concurrent_put_get_keeps_budget_and_values() -> None:
    one = unit_size()
    cache = FiboCache(max_bytes=20 * one)
    value = {n: str(n % 10) * (500 + (n * 37) % 1500) for n in range(200)}
    errors: list[str] = []

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(2000):
            n = rnd.randrange(200)
            got = cache.get(n)
            if got is None:
                cache.put(n, value[n])
            elif got != value[n]:
                errors.append(f"key {n}: wrong value")
            if cache.size_bytes > cache.max_bytes:
                errors.append(f"size {cache.size_bytes} > {cache.max_bytes}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert 0 < len(cache) <= 20 and cache.size_bytes <= cache.max_bytes


# -- through the app ----------------------------------------------------------------


def test_cacheresult_true_registers_budget_from_config() -> None:
    app = make_app(env="DEV", maxseq=100, cache_max_bytes=777777)
    assert cache_of(app).max_bytes == 777777
    assert cache_of(make_app(env="DEV", maxseq=100)).max_bytes == 33554432


def test_miss_then_hit(fibo_logs: JsonCapture) -> None:
    app = make_app(env="DEV", maxseq=1000)
    client = app.test_client()
    assert result_digits(client, "/dev/fibo?n=50") == "12586269025"
    assert cache_of(app).get(50) == "12586269025"
    fibo_logs.records.clear()
    assert result_digits(client, "/dev/fibo?n=50") == "12586269025"
    assert [r["key"] for r in fibo_logs.find("cache hit")] == [50]
    assert fibo_logs.find("cache miss") == [] and fibo_logs.find("cache fibo") == []
    hit = fibo_logs.find("cache hit")[0]
    assert hit["level"] == "DEBUG" and hit["request_id"] == fibo_logs.find("end")[0]["request_id"]


def test_cacheresult_false_disables_the_cache(fibo_logs: JsonCapture) -> None:
    app = make_app(env="DEV", maxseq=1000, cacheresult=False)
    assert "fibo_cache" not in app.extensions
    client = app.test_client()
    for _ in range(3):
        assert result_digits(client, "/dev/fibo?n=50") == "12586269025"
    assert fibo_logs.find("cache hit") == []
    assert fibo_logs.find("cache fibo") == [], "nothing is stored when the cache is off"
    assert len(fibo_logs.find("end")) == 3


def test_walking_every_n_stays_within_budget() -> None:
    budget = 256 * 1024  # a dozen of the largest values
    app = make_app(env="PROD", maxseq=100000, cache_max_bytes=budget)
    cache = cache_of(app)
    client = app.test_client()
    walked = list(range(0, 100001, 50))  # 2001 values, small and large
    sizes = []
    for n in walked:
        result_digits(client, f"/prod/fibo?n={n}")
        sizes.append(cache.size_bytes)
    assert max(sizes) <= budget
    assert 0 < len(cache) < len(walked)
    # The accounting is honest: it covers at least the characters it keeps.
    kept = [d for d in (cache.get(n) for n in walked) if d is not None]
    assert len(kept) == len(cache)
    assert sum(len(d) for d in kept) <= cache.size_bytes <= budget
    # The most recent value survived, the oldest large ones did not.
    assert cache.get(walked[-1]) is not None
    assert cache.get(walked[len(walked) // 2]) is None


def test_evicted_values_are_recomputed_correctly() -> None:
    table = fib_digits({19000, 19500, 20000})
    app = make_app(env="DEV", maxseq=20000, cache_max_bytes=12000)  # about two entries
    client = app.test_client()
    for _ in range(3):
        for n, digits in table.items():
            assert result_digits(client, f"/dev/fibo?n={n}") == digits


@pytest.mark.parametrize("budget", [33554432, 30000])
def test_concurrent_requests_all_correct(budget: int) -> None:
    keys = [0, 1, 2, 10, 93, 500, 1000, 4999, 5000, 12345, 30000]
    table = fib_digits(set(keys))
    app = make_app(env="PROD", maxseq=100000, cache_max_bytes=budget)
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        client = app.test_client()
        for _ in range(40):
            n = rnd.choice(keys)
            try:
                got = result_digits(client, f"/prod/fibo?n={n}")
            except AssertionError as exc:
                errors.append(f"n={n}: {exc}")
                continue
            if got != table[n]:
                errors.append(f"n={n}: wrong digits")
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert done[0] == 16 * 40
    assert cache_of(app).size_bytes <= budget


def test_logged_values_are_elided_in_the_middle_to_32_characters() -> None:
    digits = "".join(str(i % 10) for i in range(100))
    assert LOGGED_VALUE_CHARS == 32
    assert elide(digits[:32]) == digits[:32]  # fits: as it is
    assert elide(digits[:33]) == digits[:14] + "..." + digits[18:33]
    assert elide(digits) == digits[:14] + "..." + digits[-15:]
