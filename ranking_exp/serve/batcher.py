"""An asyncio micro-batcher: concurrent requests share one model call.

Requests put their (already validated) queries on a queue. A worker takes the first waiting
request, adds whatever else is queued (and, with ``max_wait_ms`` > 0, whatever arrives within
that time) up to ``max_batch_size`` queries, and scores them with one call of the model, padded
to the widest list; each request then gets its own scores back. Under load requests queue while
the model is busy, so batches grow by themselves; with a single client nothing waits.

Where the call runs: a batch of at most ``inline_max_documents`` (padded) documents on the event
loop's thread, since handing a call of a millisecond or two to a worker thread and back costs
about as much again on a busy machine; a larger one in a worker thread, so that the server goes
on reading requests meanwhile.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from ranking_exp.serve.schema import Query

ScoreFn = Callable[[Sequence[Query]], list[np.ndarray]]


@dataclasses.dataclass
class _Pending:
    queries: list[Query]
    future: asyncio.Future


class MicroBatcher:
    def __init__(self, score: ScoreFn, max_batch_size: int = 32, max_wait_ms: float = 0.0, workers: int = 1,
                 inline_max_documents: int = 4096):
        self._score = score
        self.inline_max_documents = inline_max_documents
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.workers = workers
        self._queue: asyncio.Queue[_Pending] | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self.calls = 0  # model calls so far
        self.scored = 0  # queries scored so far

    @property
    def running(self) -> bool:
        return bool(self._tasks) and not all(t.done() for t in self._tasks)

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="ranker")
        self._tasks = [asyncio.create_task(self._work(), name=f"batcher-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("server shutting down"))

    async def submit(self, queries: list[Query]) -> list[np.ndarray]:
        """Scores of each query (one array per query, its own length)."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(queries, future))
        return await future

    async def _collect(self, first: _Pending | None) -> tuple[list[_Pending], _Pending | None]:
        """A batch, and the request that did not fit in it (it starts the next one)."""
        queue = self._queue
        if first is None:
            first = await queue.get()
        batch, n = [first], len(first.queries)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while n < self.max_batch_size:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), timeout)
                except TimeoutError:
                    break
            if n + len(item.queries) > self.max_batch_size:
                return batch, item
            batch.append(item)
            n += len(item.queries)
        return batch, None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            batch, carry = await self._collect(carry)
            batch = [p for p in batch if not p.future.done()]  # client gone: nothing to score
            if not batch:
                continue
            queries = [q for p in batch for q in p.queries]
            try:
                if len(queries) * max(q.size for q in queries) <= self.inline_max_documents:
                    # A small call: cheaper right here than two thread hand-offs (TensorFlow runs the
                    # ops on its own threads either way); requests arriving meanwhile form the next batch.
                    scores = self._score(queries)
                else:  # a large one: the event loop goes on reading requests meanwhile
                    scores = await loop.run_in_executor(self._executor, self._score, queries)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            self.calls += 1
            self.scored += len(queries)
            start = 0
            for p in batch:
                k = len(p.queries)
                if not p.future.done():
                    p.future.set_result(scores[start:start + k])
                start += k
            await asyncio.sleep(0)  # let the loop answer these and read new requests before the next batch
