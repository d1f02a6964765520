"""ahead.run_ahead: order, errors, early close and context, as photo mode relies on them."""
import contextvars
import threading

import pytest

from pipeline.ahead import run_ahead

REQUEST = contextvars.ContextVar("request", default=None)


def test_items_arrive_in_order_and_the_worker_is_another_thread():
    threads = []

    def source():
        for i in range(50):
            threads.append(threading.get_ident())
            yield i

    assert list(run_ahead(source(), depth=3)) == list(range(50))
    assert set(threads) == {threads[0]} and threads[0] != threading.get_ident()


def test_the_worker_stays_at_most_depth_plus_one_items_ahead():
    produced, seen = [], []

    def source():
        for i in range(30):
            produced.append(i)
            yield i

    for i in run_ahead(source(), depth=2):
        seen.append(len(produced) - i - 1)  # items produced beyond the one being consumed
    assert max(seen) <= 3 and len(seen) == 30


def test_an_error_in_the_source_comes_after_the_items_before_it():
    def source():
        yield 1
        yield 2
        raise KeyError("boom")

    got = []
    with pytest.raises(KeyError, match="boom"):
        for x in run_ahead(source()):
            got.append(x)
    assert got == [1, 2]


def test_closing_early_closes_the_source_on_its_own_thread_and_leaves_nothing_running():
    state = {"closed_on": None, "produced": 0}
    release = threading.Event()

    def source():
        try:
            for i in range(1000):
                state["produced"] += 1
                yield i
        finally:
            state["closed_on"] = threading.get_ident()
            release.set()

    before = threading.active_count()
    stream = run_ahead(source(), depth=1)
    assert [next(stream), next(stream)] == [0, 1]
    stream.close()
    assert release.is_set() and state["closed_on"] != threading.get_ident()
    assert state["produced"] <= 4 and threading.active_count() == before


def test_the_worker_sees_the_callers_context():
    token = REQUEST.set("visitor-7")
    try:
        seen = list(run_ahead(REQUEST.get() for _ in range(3)))
    finally:
        REQUEST.reset(token)
    assert seen == ["visitor-7"] * 3


def test_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="depth"):
        next(run_ahead([1], depth=0))
