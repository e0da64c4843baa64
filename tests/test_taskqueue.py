"""The shared task queue (arcfast.run.queue) with real processes on the CPU: two gloo ranks where
one is slow (the fast one takes more, nothing is done twice or lost), and a worker killed while it
holds a task (another takes it over once its lease stops being renewed)."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
import time
from datetime import timedelta

import numpy as np
import pytest

from arcfast.arc.task import Pair, Task
from arcfast.run.queue import TaskQueue, longest_first

pytestmark = pytest.mark.slow

TASKS = [f"t{i:02d}" for i in range(16)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, port: int, out: str, delays: dict) -> None:
    import torch.distributed as dist

    from arcfast.run.queue import default_store

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    q = TaskQueue(default_store(), TASKS, worker=rank, lease_s=5.0, poll_s=0.05)
    done = []
    while (t := q.claim(timeout=30)) is not None:
        with q.heartbeat(every=0.5):
            time.sleep(delays[str(rank)])
        q.done(t)
        done.append(t)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(done, f)
    dist.barrier()
    dist.destroy_process_group()


def test_two_gloo_ranks_share_the_tasks_the_fast_one_takes_more(tmp_path):
    ctx = mp.get_context("spawn")
    port = _port()
    delays = {"0": 0.25, "1": 0.02}
    procs = [ctx.Process(target=_gloo_worker, args=(r, port, str(tmp_path), delays)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    slow, fast = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert sorted(slow + fast) == TASKS                # each task done exactly once, none lost
    assert len(fast) > 2 * len(slow) and slow, (slow, fast)


def _store_worker(worker: int, port: int, out: str, die_on_first: bool) -> None:
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=60))
    q = TaskQueue(store, TASKS, worker=worker, lease_s=1.0, poll_s=0.05)
    done = []
    while (t := q.claim(timeout=30)) is not None:
        if die_on_first:
            os._exit(3)                                  # killed while holding a task
        with q.heartbeat(every=0.2):
            time.sleep(0.05)
        q.done(t)
        done.append(t)
    with open(os.path.join(out, f"worker{worker}.json"), "w") as f:
        json.dump({"done": done, "taken_over": q.taken_over}, f)


def test_a_killed_workers_task_is_handed_out_again(tmp_path):
    from torch.distributed import TCPStore

    port = _port()
    store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))
    ctx = mp.get_context("spawn")
    dead = ctx.Process(target=_store_worker, args=(0, port, str(tmp_path), True))
    dead.start()
    dead.join(60)
    assert dead.exitcode == 3
    live = ctx.Process(target=_store_worker, args=(1, port, str(tmp_path), False))
    live.start()
    live.join(120)
    assert live.exitcode == 0
    rec = json.loads((tmp_path / "worker1.json").read_text())
    assert sorted(rec["done"]) == TASKS and len(rec["done"]) == len(TASKS)
    assert rec["taken_over"] == [TASKS[0]]             # the dead worker's ticket, taken over
    q = TaskQueue(store, TASKS, worker=9)
    assert q.finished() == len(TASKS) and q.claim(timeout=0) is None


def test_a_stalled_holder_learns_it_lost_the_task():
    from torch.distributed import HashStore

    store = HashStore()
    a = TaskQueue(store, ["x"], worker=0, lease_s=0.2, poll_s=0.02)
    b = TaskQueue(store, ["x"], worker=1, lease_s=0.2, poll_s=0.02)
    assert a.claim() == "x"
    assert a.renew() is True
    assert b.claim(timeout=2.0) == "x" and b.taken_over == ["x"]   # a stopped renewing
    assert a.renew() is False and not a.held                       # a drops it
    b.done("x")
    assert a.claim(timeout=0) is None and b.claim(timeout=0) is None


def test_longest_first_and_bad_arguments():
    g = lambda n: np.zeros((n, n), np.uint8)
    tasks = [Task(id=f"{k}{n}", train=[Pair(g(n), g(n))], test=[Pair(g(n), None)]) for k, n in zip("abcd", (2, 5, 3, 5))]
    assert [t.id for t in longest_first(tasks)] == ["b5", "d5", "c3", "a2"]   # ties keep their order
    from torch.distributed import HashStore

    with pytest.raises(ValueError, match="distinct"):
        TaskQueue(HashStore(), ["a", "a"], worker=0)
    with pytest.raises(ValueError, match="lease_s"):
        TaskQueue(HashStore(), ["a"], worker=0, lease_s=0)
