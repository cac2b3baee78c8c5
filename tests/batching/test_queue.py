import pytest

from clipper.batching.controllers import FixedBatchSize
from clipper.batching.queue import DeadlineQueue, Task


def task(deadline, results, name):
    return Task(name, deadline, results.append)


def test_earliest_deadline_first():
    q, out = DeadlineQueue(), []
    for name, deadline in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("d", 4.0)]:
        q.push(task(deadline, out, name))
    assert [t.input for t in q.pop_batch(3, now=0.0)[0]] == ["a", "b", "c"]
    assert [t.input for t in q.pop_batch(3, now=0.0)[0]] == ["d"]
    assert len(q) == 0


def test_expired_and_answered_tasks_are_dropped_not_dispatched():
    q, out = DeadlineQueue(), []
    expired, answered, live = task(1.0, out, "x"), task(5.0, out, "y"), task(6.0, out, "z")
    answered.finish("done elsewhere")
    for t in (expired, answered, live):
        q.push(t)
    batch, dropped = q.pop_batch(10, now=2.0)
    assert [t.input for t in batch] == ["z"] and dropped == [expired]
    stats = q.statistics()
    assert (stats.expired, stats.dispatched, stats.depth) == (1, 1, 0)


def test_tasks_due_before_keep_before_stay_queued_in_order():
    q, out = DeadlineQueue(), []
    for name, deadline in [("refused", 1.5), ("k1", 2.5), ("k2", 2.8), ("b1", 4.0), ("b2", 5.0)]:
        q.push(task(deadline, out, name))
    batch, dropped = q.pop_batch(10, now=1.0, horizon=2.0, keep_before=3.0)
    assert [t.input for t in batch] == ["b1", "b2"]
    assert [t.input for t in dropped] == ["refused"]
    # Kept, not dispatched nor expired: still first in line for another replica.
    assert [t.input for t in q.pop_batch(10, now=1.0)[0]] == ["k1", "k2"]
    stats = q.statistics()
    assert (stats.expired, stats.dispatched, stats.depth) == (1, 4, 0)


def test_scan_limit_bounds_how_many_tasks_are_looked_past():
    q, out = DeadlineQueue(), []
    for i in range(10):
        q.push(task(2.0 + i / 100, out, f"k{i}"))
    q.push(task(9.0, out, "far"))
    batch, dropped = q.pop_batch(4, now=1.0, keep_before=3.0, scan_limit=5)
    assert batch == [] and dropped == [] and len(q) == 11
    batch, _ = q.pop_batch(4, now=1.0, keep_before=3.0)
    assert [t.input for t in batch] == ["far"] and len(q) == 10


def test_pop_latest_takes_the_live_task_due_last_and_keeps_the_order_of_the_rest():
    q, out = DeadlineQueue(), []
    deadlines = [3.0, 1.0, 7.0, 2.0, 6.0, 4.0, 8.0, 5.0]
    tasks = {d: task(d, out, f"t{d:g}") for d in deadlines}
    for d in deadlines:
        q.push(tasks[d])
    tasks[8.0].finish("answered elsewhere")  # the last due, but done: skipped
    assert q.pop_latest(horizon=2.0).input == "t7"
    assert q.pop_latest(horizon=2.0).input == "t6"
    # Nothing due after the horizon: nothing taken, the queue as it was.
    assert q.pop_latest(horizon=5.0) is None and len(q) == 6
    assert [t.input for t in q.pop_batch(10, now=0.0)[0]] == ["t1", "t2", "t3", "t4", "t5"]
    assert q.statistics().dispatched == 7
    assert q.pop_latest(horizon=0.0) is None  # only the done task was left


def test_expire_removes_only_past_deadlines():
    q, out = DeadlineQueue(), []
    for name, deadline in [("a", 1.0), ("b", 2.0), ("c", 3.0)]:
        q.push(task(deadline, out, name))
    assert [t.input for t in q.expire(2.0)] == ["a", "b"]
    assert len(q) == 1 and q.earliest_deadline() == 3.0


def test_the_queue_is_bounded():
    q, out = DeadlineQueue(capacity=2), []
    assert q.push(task(1.0, out, "a")) and q.push(task(1.0, out, "b"))
    assert not q.push(task(1.0, out, "c"))
    assert q.statistics().rejected == 1
    q.requeue(task(0.5, out, "retry"))  # retries ignore the bound
    assert len(q) == 3


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
