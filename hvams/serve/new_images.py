"""Images that arrive with a request, embedded together across concurrent requests.

When the image model is idle, a request's new images go to it at once (after waiting
``max_wait`` seconds for other requests' where that is set); while it embeds a batch, the
images that arrive queue, and go together as soon as it is done (or when ``max_batch`` are
pending). So a lone request never waits for company, and under load the batches grow with
the load. The model runs in a thread, so the event loop keeps taking requests meanwhile; a
request alone in its process embeds its images in that thread itself (``embed_here``), with
no round trip through the loop. Each result is kept in the
model's bounded LRU cache (``ServingModel.remember``) under its key *and* the sha1 of its
bytes, so the same image is embedded once, and a client sending other bytes under a key
cannot change what another client's image gets. An image that does not decode gets the
missing-image row and is reported ``bad``.
"""
from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import numpy as np

TABLE, EMBEDDED, CACHED, UNKNOWN, BAD = "table", "embedded", "cached", "unknown", "bad"


@dataclass
class _Pending:
    model: object
    keys: list[int] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)


class NewImages:
    """The micro-batcher of one serving process."""

    def __init__(self, max_batch: int = 64, max_wait: float = 0.0, on_batch=None,
                 executor=None):
        self.max_batch, self.max_wait = max_batch, max_wait
        self.executor = executor           # where the image model runs (None: the loop's pool)
        self.on_batch = on_batch           # on_batch(n_images, n_bad): metrics
        self._pending: _Pending | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running = 0                  # batches handed to the model, not done yet

    def idle(self) -> bool:
        """No batch pending or running (read from any thread: a stale answer costs only a
        batch that could have been shared)."""
        return self._pending is None and not self._running

    @staticmethod
    def _recall(model, images: dict[int, bytes], out: dict, source: dict) -> list[tuple]:
        """Fill ``out``/``source`` from the cache; (key, cache entry, bytes) of the rest."""
        todo = []
        for key, data in images.items():
            entry = (key, hashlib.sha1(data).digest())
            emb = model.recall(entry)
            if emb is None:
                todo.append((key, entry, data))
            else:
                out[key], source[key] = emb, CACHED
        return todo

    def _embed_batch(self, model, entries: list[tuple], blobs: list[bytes]):
        """(embeddings, ok) of a batch, in the calling thread; the good ones are cached."""
        emb, ok, _ = model.images.embed(np.array([k for k, _ in entries], np.int64), blobs)
        if self.on_batch:
            self.on_batch(len(entries), int((~ok).sum()))
        for i, entry in enumerate(entries):
            if ok[i]:
                model.remember(entry, emb[i])
        return emb, ok

    def embed_here(self, model, images: dict[int, bytes]
                   ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """What ``embed`` gives, computed in the calling thread (the compute thread, for a
        request that is alone: nothing to batch with)."""
        out, source = {}, {}
        todo = self._recall(model, images, out, source)
        if todo:
            emb, ok = self._embed_batch(model, [e for _, e, _ in todo], [d for *_, d in todo])
            for i, (key, _, _) in enumerate(todo):
                out[key], source[key] = emb[i], EMBEDDED if ok[i] else BAD
        return out, source

    async def embed(self, model, images: dict[int, bytes]
                    ) -> tuple[dict[int, np.ndarray], dict[int, str]]:
        """For ``images`` (key -> bytes) the table lacks: their embeddings and each key's
        source (``embedded`` now, ``cached`` from before, or ``bad``)."""
        out, source = {}, {}
        waiting = [(key, self._submit(model, entry, data))
                   for key, entry, data in self._recall(model, images, out, source)]
        if waiting:
            self._kick()
        for key, fut in waiting:
            emb, ok = await fut
            out[key], source[key] = emb, EMBEDDED if ok else BAD
        return out, source

    def _submit(self, model, key: tuple, data: bytes) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        if self._pending is not None and self._pending.model is not model:
            self._flush()   # a reload swapped the model: the old one's batch goes first
        if self._pending is None:
            self._pending = _Pending(model)
        fut = loop.create_future()
        p = self._pending
        p.keys.append(key)
        p.blobs.append(data)
        p.futures.append(fut)
        if len(p.keys) >= self.max_batch:
            self._flush()
        return fut

    def _kick(self) -> None:
        """A request's images are all pending: to the idle model now (or after
        ``max_wait``); a busy one takes them when its batch is done."""
        if self._pending is None or self._running:
            return
        if self.max_wait <= 0:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_wait, self._flush)

    def _flush(self) -> None:
        p, self._pending = self._pending, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if p is None:
            return
        self._running += 1
        asyncio.get_running_loop().create_task(self._run(p))

    async def _run(self, p: _Pending) -> None:
        loop = asyncio.get_running_loop()
        try:
            emb, ok = await loop.run_in_executor(
                self.executor, self._embed_batch, p.model, p.keys, p.blobs)
            for i, fut in enumerate(p.futures):
                if not fut.done():
                    fut.set_result((emb[i], bool(ok[i])))
        except Exception as exc:  # the model failed: every waiting request hears it
            for fut in p.futures:
                if not fut.done():
                    fut.set_exception(exc)
        finally:
            self._running -= 1
            if not self._running and self._pending is not None:
                self._flush()  # what queued while the model was busy, as one batch
