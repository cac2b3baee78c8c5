import pytest

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.queue import DeadlineQueue, Task


def task(deadline, results, name):
    return Task(name, deadline, results.append)


def test_earliest_deadline_first():
    q, out = DeadlineQueue(), []
    for name, deadline in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("d", 4.0)]:
        q.push(task(deadline, out, name))
    assert [t.input for t in q.pop_batch(3, now=0.0)] == ["a", "b", "c"]
    assert [t.input for t in q.pop_batch(3, now=0.0)] == ["d"]
    assert len(q) == 0


def test_expired_and_answered_tasks_are_dropped_not_dispatched():
    q, out = DeadlineQueue(), []
    expired, answered, live = task(1.0, out, "x"), task(5.0, out, "y"), task(6.0, out, "z")
    answered.finish("done elsewhere")
    for t in (expired, answered, live):
        q.push(t)
    assert [t.input for t in q.pop_batch(10, now=2.0)] == ["z"]
    stats = q.statistics()
    assert (stats.expired, stats.dispatched, stats.depth) == (2, 1, 0)


def test_a_task_finishes_once():
    out: list[str] = []
    t = task(1.0, out, "x")
    t.finish("first")
    t.finish("second")
    assert out == ["first"]


def test_fixed_batch_size():
    assert FixedBatchSize(8).max_batch_size() == 8
    with pytest.raises(ValueError):
        FixedBatchSize(0)
