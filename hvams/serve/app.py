"""``hvams serve``: the HTTP/JSON scoring server (Starlette on uvicorn).

Routes: ``POST /v1/score``, ``POST /v1/reload`` (administrative), ``GET /healthz``,
``GET /readyz``, ``GET /metrics`` (Prometheus text). Why Starlette on uvicorn: a small,
well-kept ASGI stack whose event loop lets concurrent requests' new images be embedded
together (``new_images.py``) while scoring itself runs in the loop's thread pool, and whose
request stream lets a body's size be enforced before it is parsed. The request schema is the
export's ``schema.json``, checked by ``request.py`` (a pydantic model per schema would be
built at run time; the checks are a page).

The served model is one reference, swapped whole by a reload: a request takes the reference
once, when it starts, and uses that model to the end, so a request in flight during a reload
finishes on the old model and none mixes the two. Under ``--workers N`` (uvicorn's worker
processes) the process that takes a reload writes the export it loaded to a control file the
others poll (``CONTROL_ENV``), so all of them move to it.
"""
from __future__ import annotations

import asyncio
import gc
import hmac
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .export_tables import ExportError, chain_of
from .metrics import ServeMetrics
from .model import ServingModel
from .new_images import TABLE, UNKNOWN, NewImages
from .request import Limits, RequestError, parse

CONFIG_ENV = "HVAMS_SERVE_CONFIG"     # the ServeConfig, as JSON, of uvicorn's worker processes
CONTROL_ENV = "HVAMS_SERVE_CONTROL"   # their shared directory for the reload control file
CONTROL_FILE = "current.json"


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``hvams serve`` is started with (the CLI's options, one for one)."""

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    models_root: str | None = None     # reload loads only exports under it (default: parent)
    admin_token_file: str | None = None  # reload is off without it
    max_body_bytes: int = 8 << 20
    max_candidates: int = 1000
    max_behaviors: int = 1000
    max_image_bytes: int = 4 << 20
    max_new_images: int = 32           # images a request may bring to be embedded
    max_image_pixels: int = 2048 * 2048  # decompression-bomb limit of an arriving image
    image_cache: int = 100_000
    batch_wait_ms: float = 0.0         # an idle image model takes new images at once
    batch_images: int = 64
    watch: str | None = None           # load the newest export in this directory
    watch_every_s: float = 2.0

    @property
    def root(self) -> Path:
        return Path(self.models_root or Path(self.model_dir).resolve().parent).resolve()

    def admin_token(self) -> str | None:
        if not self.admin_token_file:
            return None
        token = Path(self.admin_token_file).read_text().strip()
        if not token:
            raise ValueError(f"--admin-token-file {self.admin_token_file}: the file is empty")
        return token


class AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped: a field name a client sent (a lone
    surrogate included) always encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False,
                          separators=(",", ":")).encode("ascii")


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body = {"error": message}
    if field:
        body["field"] = field
    return AsciiJSON(body, status_code=status)


def _settle_heap() -> None:
    """Collect, then exempt what is alive (the model, torch, the app) from the cyclic
    collector: its full passes over the whole heap took 110 ms each in a serving process,
    a pause for every request in flight; after a freeze they cover only what came since."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class BodyTooLarge(Exception):
    pass


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise RequestError("Content-Length", "not a byte count")
        if int(declared) > limit:
            raise BodyTooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


class Server:
    """The state of one serving process: the model, the new-image batcher, the metrics."""

    def __init__(self, cfg: ServeConfig, model: ServingModel | None = None):
        self.cfg = cfg
        self.limits = Limits(cfg.max_candidates, cfg.max_behaviors, cfg.max_image_bytes)
        self.metrics = ServeMetrics()
        self.token = cfg.admin_token()
        self.model = model
        # One thread computes (scores, new images): torch's own threads use the cores, and
        # requests queue here rather than oversubscribe them; the loop keeps parsing.
        self.compute = ThreadPoolExecutor(1, thread_name_prefix="hvams-compute")
        self.images = NewImages(cfg.batch_images, cfg.batch_wait_ms / 1000,
                                on_batch=self.metrics.embedded, executor=self.compute)
        self.in_flight = 0   # score requests this process is answering (the loop's count)
        self._reloading = asyncio.Lock()
        self.control = os.environ.get(CONTROL_ENV)

    # --- model ---
    def load_first(self) -> None:
        self.model = ServingModel.load(self.cfg.model_dir, self.cfg.image_cache,
                                       max_pixels=self.cfg.max_image_pixels)
        self.metrics.loaded(self.model)

    async def swap_to(self, path: Path) -> ServingModel:
        """Load ``path`` beside the served model and swap: in a thread, the loop serves on."""
        async with self._reloading:
            current = self.model
            new = await asyncio.get_running_loop().run_in_executor(
                None, ServingModel.load, path, self.cfg.image_cache, current,
                self.cfg.max_image_pixels)
            self.model = new   # one reference: a request already running keeps the old one
            current = None     # (so that the heap is settled without it)
            self.metrics.loaded(new)
            await asyncio.get_running_loop().run_in_executor(None, _settle_heap)
            if self.control and not self.cfg.watch:   # the sibling processes follow
                try:
                    tmp = Path(self.control) / f".{CONTROL_FILE}.{os.getpid()}"
                    tmp.write_text(json.dumps({"model_dir": str(new.dir)}))
                    os.replace(tmp, Path(self.control) / CONTROL_FILE)
                except OSError as exc:
                    print(f"hvams serve: {new.dir} is served here, but the other processes "
                          f"were not told ({exc})", file=sys.stderr, flush=True)
            return new

    # --- routes ---
    async def score(self, request: Request) -> Response:
        t0 = time.perf_counter()
        response = await self._score(request)
        self.metrics.request("score", response.status_code, time.perf_counter() - t0)
        return response

    def _parse(self, model: ServingModel, raw: bytes):
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise RequestError("body", f"not valid JSON ({str(exc)[:200]})") from None
        try:
            return parse(body, model.schema, model.fields, self.limits)
        except RecursionError:
            raise RequestError("body", "nested too deeply") from None

    @staticmethod
    def _score_batch(model: ServingModel, batch, embedded: dict):
        return model.score(batch, embedded), model.lookup.take_unseen()

    def _parse_and_score(self, model: ServingModel, raw: bytes):
        """Parse and score, in one hop to the compute thread, unless candidates bring images
        to embed and other requests are in flight: then their images go to the batcher,
        to be embedded with those requests'. Returns (request, image sources, new images,
        scores and unseen IDs or None)."""
        req = self._parse(model, raw)
        # a candidate's image: the export's table, else its bytes (embedded now, or cached
        # by key and bytes); behavior images come from the table or get the missing row
        keys = [k for k in set(req.image_of) if k is not None]
        sources = dict(zip(keys, np.where(model.knows_images(keys), TABLE, UNKNOWN).tolist()))
        new = {k: v for k, v in req.new_images.items() if sources.get(k) == UNKNOWN}
        embedded = {}
        if new and model.images is not None:
            if len(new) > self.cfg.max_new_images:
                raise RequestError("candidates", f"{len(new)} new images, more than the limit "
                                   f"of {self.cfg.max_new_images} a request", status=413)
            if self.in_flight > 1 or not self.images.idle():
                return req, sources, new, None
            embedded, found = self.images.embed_here(model, new)
            sources.update(found)
        return req, sources, new, self._score_batch(model, req.batch, embedded)

    async def _score(self, request: Request) -> Response:
        model = self.model   # this request's model, whatever a reload does meanwhile
        if model is None:
            return _error(503, "no model loaded yet")
        self.in_flight += 1
        try:
            return await self._score_on(model, request)
        finally:
            self.in_flight -= 1

    async def _score_on(self, model: ServingModel, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        try:
            raw = await _body(request, self.cfg.max_body_bytes)
            # parsed (and, without new images, scored) beside the loop, which keeps taking
            # requests and running the new-image batches
            req, sources, new, scored = await loop.run_in_executor(
                self.compute, self._parse_and_score, model, raw)
        except BodyTooLarge:
            return _error(413, f"body larger than the limit of {self.cfg.max_body_bytes} bytes")
        except RequestError as exc:
            return _error(exc.status, str(exc), exc.field)
        if scored is None:  # new images: embedded in micro-batches, then scored
            try:
                embedded, found = await asyncio.wait_for(self.images.embed(model, new), 60)
            except TimeoutError:
                return _error(503, "the image model did not answer within 60 s")
            sources.update(found)
            scored = await loop.run_in_executor(self.compute, self._score_batch, model,
                                                req.batch, embedded)
        scores, unseen = scored
        self.metrics.scored(req, sources, unseen)
        return AsciiJSON({"scores": scores.tolist(),
                          "images": [sources.get(k) if k is not None else None
                                     for k in req.image_of],
                          "model": model.name, "checkpoint": model.manifest.get("checkpoint")})

    async def reload(self, request: Request) -> Response:
        t0 = time.perf_counter()
        response = await self._reload(request)
        self.metrics.request("reload", response.status_code, time.perf_counter() - t0)
        return response

    async def _reload(self, request: Request) -> Response:
        if self.token is None:
            return _error(403, "reload is off: start the server with --admin-token-file")
        if self.cfg.watch:
            return _error(409, f"this server follows --watch {self.cfg.watch}: put the export "
                               f"there")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            return _error(403, "a valid admin token is required (Authorization: Bearer TOKEN)")
        try:
            body = json.loads(await _body(request, 64 << 10))
            target = body["model_dir"] if isinstance(body, dict) else None
            if not isinstance(target, str) or not target:
                raise RequestError("model_dir", "expected the path of an export")
        except BodyTooLarge:
            return _error(413, "body larger than 64 KiB")
        except (ValueError, UnicodeDecodeError, KeyError, RecursionError):
            return _error(400, 'expected {"model_dir": PATH}', "model_dir")
        except RequestError as exc:
            return _error(exc.status, str(exc), exc.field)
        try:
            path = (self.cfg.root / target).resolve()   # an absolute target replaces the root
        except (ValueError, OSError) as exc:
            return _error(400, f"not a usable path ({exc})", "model_dir")
        if not path.is_relative_to(self.cfg.root):
            return _error(403, f"{target} resolves outside the models root {self.cfg.root}",
                          "model_dir")
        if not (path / "manifest.json").is_file():
            return _error(404, f"{target}: no export there (no manifest.json)", "model_dir")
        try:   # a delta loads the exports it sits on: each must be under the root too
            outside = [d for d in chain_of(path) if not d.is_relative_to(self.cfg.root)]
        except ExportError as exc:
            return _error(409, f"{target}: not loaded: {exc}", "model_dir")
        if outside:
            return _error(403, f"{target} is a delta on {outside[0]}, outside the models root "
                               f"{self.cfg.root}", "model_dir")
        # its name, not the model: the swap settles the heap, which the old model should
        # then be in only through the requests still running on it
        previous = self.model.name if self.model else None
        try:
            new = await self.swap_to(path)
        except Exception as exc:   # whatever is wrong with the export, the old model serves on
            self.metrics.reload_failed()
            return _error(409, f"{target}: not loaded, still serving "
                               f"{previous or 'nothing'}: {exc}", "model_dir")
        return AsciiJSON({"model": new.name, "checkpoint": new.manifest.get("checkpoint"),
                          "previous": previous})

    async def healthz(self, request: Request) -> Response:
        return AsciiJSON({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.model is None:
            return _error(503, "no model loaded yet")
        return AsciiJSON({"status": "ready", "model": self.model.name,
                          "checkpoint": self.model.manifest.get("checkpoint"),
                          "pid": os.getpid()})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, media_type=content_type)

    def _wanted(self) -> Path | None:
        """The export this process should serve: the newest in ``watch`` (by name; every
        process watches it), else the one a sibling process loaded last (the control file)."""
        if self.cfg.watch:
            root = Path(self.cfg.watch).resolve()
            return max((d for d in root.iterdir() if (d / "manifest.json").is_file()),
                       default=None, key=lambda d: d.name)
        try:
            return Path(json.loads((Path(self.control) / CONTROL_FILE).read_text())["model_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def watch(self) -> None:
        """Follow ``_wanted``: every ``watch_every_s`` with ``--watch``, every half second
        for a sibling's reload. An export that fails to load is tried again only once its
        manifest changes; nothing a bad export does stops the watching."""
        every = self.cfg.watch_every_s if self.cfg.watch else min(self.cfg.watch_every_s, 0.5)
        failed = None
        while True:
            await asyncio.sleep(every)
            try:
                wanted = self._wanted()
                if wanted is None or (self.model is not None and wanted.resolve() == self.model.dir):
                    continue
                stamp = (str(wanted), (wanted / "manifest.json").stat().st_mtime_ns)
                if stamp == failed:
                    continue
                try:
                    await self.swap_to(wanted)
                    failed = None
                except Exception as exc:
                    failed = stamp
                    self.metrics.reload_failed()
                    print(f"hvams serve: {wanted} not loaded, still serving "
                          f"{self.model.name if self.model else 'nothing'}: {exc}",
                          file=sys.stderr, flush=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                print(f"hvams serve: watching: {exc}", file=sys.stderr, flush=True)


async def _not_found(request: Request, exc) -> Response:
    return _error(404, f"no route {request.method} {request.url.path}")


async def _method(request: Request, exc) -> Response:
    return _error(405, f"{request.method} is not allowed on {request.url.path}")


def create_app(cfg: ServeConfig, server: Server | None = None) -> Starlette:
    """The ASGI app of ``cfg``; the model is loaded at start-up, before the port answers."""
    import contextlib

    server = server or Server(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        import torch

        torch.set_num_threads(1)
        if server.model is None:
            await asyncio.get_running_loop().run_in_executor(None, server.load_first)
        _settle_heap()
        task = asyncio.create_task(server.watch()) if cfg.watch or server.control else None
        yield
        if task:
            task.cancel()

    routes = [Route("/v1/score", server.score, methods=["POST"]),
              Route("/v1/reload", server.reload, methods=["POST"]),
              Route("/healthz", server.healthz, methods=["GET"]),
              Route("/readyz", server.readyz, methods=["GET"]),
              Route("/metrics", server.metrics_text, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: _not_found, 405: _method})
    app.state.server = server
    return app


def app_from_env() -> Starlette:
    """The app of a uvicorn worker process (``--workers N``): its config from ``CONFIG_ENV``."""
    return create_app(ServeConfig(**json.loads(os.environ[CONFIG_ENV])))
