"""A task queue shared by workers through a torch.distributed key-value store.

Under ``torchrun`` the rendezvous already runs a store every rank can reach (a ``TCPStore``, also
across machines); :func:`default_store` returns it. Workers pull task ids from it instead of each
taking a fixed share, so a worker that draws slow tasks never leaves the others idle:

    queue = TaskQueue(store, [t.id for t in longest_first(tasks)], worker=rank)
    while (task_id := queue.claim(timeout=deadline.remaining())) is not None:
        with queue.heartbeat():             # renews this worker's leases while the task trains
            answer(task_id)
        queue.done(task_id)

How (every operation atomic in the store; keys under ``prefix``):

- ``next``: a ticket counter (``store.add``); the i-th ticket is the i-th task of the order the
  workers agreed on (the same list in every worker: longest first, see :func:`longest_first`);
- ``lease/<i>``: ``"<worker>:<beat>"``, written when task i is handed out. The holder bumps
  ``beat`` while it works (:meth:`TaskQueue.renew`, or :meth:`TaskQueue.heartbeat` in a thread);
- ``done/<i>``: set when task i's results are written;
- once the tickets run out, a worker looking for work watches the leases of unfinished tasks; a
  lease whose value has not changed for ``lease_s`` seconds (by the watcher's own monotonic clock,
  so machines' clocks need not agree) belongs to a worker that died, and the watcher takes the task
  over with ``compare_set`` on the value it saw, so at most one worker wins it. ``claim`` returns
  None once every task is done, or when ``timeout`` passes.

A worker whose lease was taken over (it stalled for longer than ``lease_s``) learns it from
:meth:`TaskQueue.renew` (False) and should drop the task: the new holder redoes it.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Optional, Sequence

PREFIX = "arcfast/queue"


def default_store():
    """The store of the default process group (torchrun's rendezvous); ValueError without one."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("no torch.distributed process group: start the workers under torchrun "
                         "(or init_process_group) to share a task queue")
    return dist.distributed_c10d._get_default_store()


def longest_first(tasks: Sequence) -> list:
    """``tasks`` ordered by their size in grid cells, largest first (ties: the given order): the
    long tasks start early, so no worker is left with one at the end while the others idle."""
    def cells(t) -> int:
        return sum(p.input.size + (p.output.size if p.output is not None else 0) for p in [*t.train, *t.test])

    return [t for _, t in sorted(enumerate(tasks), key=lambda it: (-cells(it[1]), it[0]))]


class TaskQueue:
    """Task ids handed out to workers from ``store`` (see the module docstring).

    ``task_ids``: the same list, in the same order, in every worker; ``worker``: this worker's
    id (its rank); ``lease_s``: how long a lease may go unrenewed before its task is handed out
    again; ``poll_s``: how often a worker without work looks at the leases."""

    def __init__(self, store, task_ids: Sequence[str], worker: int, lease_s: float = 120.0,
                 poll_s: float = 0.5, prefix: str = PREFIX):
        if lease_s <= 0 or poll_s <= 0:
            raise ValueError(f"lease_s and poll_s must be > 0, got {lease_s}, {poll_s}")
        if len(set(task_ids)) != len(task_ids):
            raise ValueError("TaskQueue: task ids must be distinct")
        self.store, self.ids, self.worker = store, list(task_ids), int(worker)
        self.index = {t: i for i, t in enumerate(self.ids)}
        self.lease_s, self.poll_s, self.prefix = float(lease_s), float(poll_s), prefix
        self.held: dict[int, bytes] = {}       # task index -> the lease value this worker wrote last
        self.claimed: list[str] = []           # every task this worker was handed, in order
        self.taken_over: list[str] = []        # those it took over from a worker that stopped renewing
        self._seen: dict[int, tuple[bytes, float]] = {}   # lease value and when it was first seen
        self._lock = threading.Lock()

    def _key(self, kind: str, i: int) -> str:
        return f"{self.prefix}/{kind}/{i}"

    def _lease(self, beat: int) -> bytes:
        return f"{self.worker}:{beat}".encode()

    def _take(self, i: int, value: bytes, takeover: bool) -> str:
        with self._lock:
            self.held[i] = value
        self.claimed.append(self.ids[i])
        if takeover:
            self.taken_over.append(self.ids[i])
        return self.ids[i]

    # -- handing out -----------------------------------------------------------------------------
    def claim(self, timeout: Optional[float] = None) -> Optional[str]:
        """The next task for this worker, or None once every task is done (or after ``timeout``
        seconds of waiting for a stalled worker's lease to expire)."""
        n = len(self.ids)
        i = int(self.store.add(f"{self.prefix}/next", 1)) - 1
        if i < n:
            value = self._lease(0)
            self.store.set(self._key("lease", i), value)
            return self._take(i, value, takeover=False)
        stop = None if timeout is None else time.monotonic() + max(0.0, timeout)
        while True:
            pending = [j for j in range(n) if not self.store.check([self._key("done", j)])]
            if not pending:
                return None
            now = time.monotonic()
            for j in pending:
                if j in self.held:
                    continue
                key = self._key("lease", j)
                # No lease yet: handed out a moment ago (or its worker died before writing one,
                # which the same expiry covers: compare_set from "" takes a missing key).
                value = self.store.get(key) if self.store.check([key]) else b""
                seen = self._seen.get(j)
                if seen is None or seen[0] != value:
                    self._seen[j] = (value, now)
                elif now - seen[1] >= self.lease_s:
                    mine = self._lease(int(value.split(b":")[1]) + 1 if value else 0)
                    if self.store.compare_set(key, value, mine) == mine:
                        return self._take(j, mine, takeover=True)
            if stop is not None and now >= stop:
                return None
            time.sleep(self.poll_s)

    def renew(self, task_id: Optional[str] = None) -> bool:
        """Bump the lease of ``task_id`` (default: every task this worker holds). False when a
        lease is no longer this worker's: another worker took the task over."""
        with self._lock:
            items = list(self.held.items()) if task_id is None else [(self.index[task_id], self.held[self.index[task_id]])]
        ok = True
        for i, value in items:
            beat = int(value.split(b":")[1]) + 1
            new = self._lease(beat)
            if self.store.compare_set(self._key("lease", i), value, new) == new:
                with self._lock:
                    if i in self.held:
                        self.held[i] = new
            else:
                ok = False
                with self._lock:
                    self.held.pop(i, None)
        return ok

    @contextmanager
    def heartbeat(self, every: Optional[float] = None):
        """Renew this worker's leases every ``every`` seconds (default a quarter of ``lease_s``) in
        a background thread for the duration of the block."""
        stop = threading.Event()
        period = every if every is not None else self.lease_s / 4

        def beat():
            while not stop.wait(period):
                self.renew()

        thread = threading.Thread(target=beat, name="arcfast-lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()

    def done(self, task_id: str) -> None:
        """Mark ``task_id`` finished (its results are written): no worker is handed it again."""
        i = self.index[task_id]
        self.store.set(self._key("done", i), str(self.worker))
        with self._lock:
            self.held.pop(i, None)

    def remaining(self) -> int:
        """Tasks not yet handed out (by ticket) to any worker."""
        return max(0, len(self.ids) - int(self.store.add(f"{self.prefix}/next", 0)))

    def finished(self) -> int:
        """How many tasks are done, by any worker."""
        return sum(self.store.check([self._key("done", j)]) for j in range(len(self.ids)))


__all__ = ["TaskQueue", "default_store", "longest_first", "PREFIX"]
