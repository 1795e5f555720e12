"""``GET /metrics``: what a serving process did, in Prometheus text format (prometheus_client).

Each server keeps its own registry (several may live in one test process); under
``--workers N`` the processes share prometheus_client's multiprocess directory, and every
process answers with the sum over all. Counters: requests by route and status, images by
where they came from (table, embedded now, cached, unknown, bad), IDs the export did not
know by table, reload failures; a latency histogram per route; the served export.
"""
from __future__ import annotations

import os
import collections

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Seconds: fine below 10 ms, where the targets are.
BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
           0.1, 0.25, 0.5, 1.0, 2.5)


class ServeMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("hvams_requests", "Requests by route and HTTP status.",
                                ["route", "status"], registry=r)
        self.latency = Histogram("hvams_request_seconds", "Time to answer, by route.",
                                 ["route"], buckets=BUCKETS, registry=r)
        self.candidates = Counter("hvams_candidates", "Candidates scored.", registry=r)
        self.images = Counter("hvams_images", "Candidates' images by source: table, embedded "
                              "(now), cached (embedded before), unknown, bad.", ["source"],
                              registry=r)
        self.image_batches = Counter("hvams_image_batches", "Calls of the image model for new "
                                     "images (each embeds a micro-batch).", registry=r)
        self.unknown_ids = Counter("hvams_unknown_ids", "IDs the export's tables lack (served "
                                   "their initial row), by table.", ["table"], registry=r)
        self.reload_failures = Counter("hvams_reload_failures", "Reloads refused or failed "
                                       "(the old model kept serving).", registry=r)
        self.model = Gauge("hvams_model", "1 for the export being served.",
                           ["export", "checkpoint"], registry=r, multiprocess_mode="liveall")
        self._served: tuple[str, str] | None = None

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def scored(self, req, sources: dict, unseen: dict) -> None:
        self.candidates.inc(req.batch.n)
        by_source = collections.Counter(sources.get(key, "unknown") for key in req.image_of if key is not None)
        for source, n in by_source.items():
            self.images.labels(source).inc(n)
        for name, count in unseen.items():
            self.unknown_ids.labels(name).inc(count)

    def embedded(self, n: int, bad: int) -> None:
        self.image_batches.inc()

    def loaded(self, model) -> None:
        if self._served is not None:   # (remove alone does nothing across processes)
            self.model.labels(*self._served).set(0)
            self.model.remove(*self._served)
        self._served = (model.name, str(model.manifest.get("checkpoint")))
        self.model.labels(*self._served).set(1)

    def reload_failed(self) -> None:
        self.reload_failures.inc()

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
