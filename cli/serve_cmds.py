"""``hvams export``, ``hvams predict`` and ``hvams serve``."""
from __future__ import annotations

import json

import click

from .common import reported


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Export directory.")
@click.option("--workers", type=int, default=2, show_default=True,
              help="Processes that embed the image store.")
@click.option("--since", type=click.Path(exists=True, file_okay=False), default=None,
              help="An earlier export: write only the rows changed since it, and the keys "
                   "deleted.")
def export_cmd(run_dir, out, workers, since):
    """Export a trained run for serving: image embeddings, ID tables, the worker model.

    \b
    Example:
      hvams export runs/dicm --out models/dicm
      hvams export runs/day31 --out models/day31 --since models/day30
    """
    from hvams.serve.export import export_run

    with reported(FileNotFoundError):
        m = export_run(run_dir, out, workers, since)
    c = m["image_counts"] or {}
    click.echo(f"exported {run_dir} ({m['checkpoint']}, {m['model']}) to {out}: "
               f"{len(m['files'])} files; images embedded {c.get('served', 0)}, "
               f"missing/corrupt {c.get('missing', 0) + c.get('corrupt', 0)}")
    if "delta_counts" in m:
        d = m["delta_counts"]
        changed = sum(v["changed"] for v in d.values())
        click.echo(f"a delta on {since} ({m['since_checkpoint']}): {changed:,} of "
                   f"{sum(v['rows'] for v in d.values()):,} rows changed, "
                   f"{sum(v['deleted'] for v in d.values()):,} keys deleted")


@click.command("predict")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "day_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A day directory (day=NN) to score.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="scores.parquet")
@click.option("--batch-size", type=int, default=2048, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print metrics and counts as JSON.")
@click.option("--images", type=click.Path(exists=True, file_okay=False), default=None,
              help="An image store: image keys the export lacks are embedded from it by the "
                   "exported image model.")
def predict_cmd(model_dir, day_dir, out, batch_size, as_json, images):
    """Score a day with an export, in one process without MPI.

    \b
    Example:
      hvams predict models/dicm --data data/demo/day=03 --out scores.parquet
    """
    from hvams.serve.predict import predict
    from hvams.train.report import format_metrics_table

    with reported(ValueError):
        res = predict(model_dir, day_dir, out, batch_size, images)
    if as_json:
        click.echo(json.dumps(res, indent=1, default=float))
        return
    click.echo(format_metrics_table([{**res["metrics"], "model": res["model"], "step": res["step"]}]))
    c = res["counts"]
    click.echo(f"scored {res['rows']} samples into {out}; unknown image keys (missing-image "
               f"embedding): {c.get('unknown_images', 0)} of {c.get('images', 0)}"
               + (f"; embedded from {images}: {c.get('embedded_images', 0)}" if images else ""))


@click.command("serve")
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (another than 127.0.0.1 exposes the server).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Server processes (uvicorn workers), each with the model in memory.")
@click.option("--models-root", type=click.Path(exists=True, file_okay=False), default=None,
              help="Reload loads only exports under it (default: MODEL_DIR's parent).")
@click.option("--admin-token-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File holding the token POST /v1/reload needs (without it, reload is off).")
@click.option("--watch", type=click.Path(exists=True, file_okay=False), default=None,
              help="Serve the newest export in this directory (by name) as it appears.")
@click.option("--max-body-bytes", type=click.IntRange(1), default=8 << 20, show_default=True)
@click.option("--max-candidates", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-behaviors", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--max-image-bytes", type=click.IntRange(1), default=4 << 20, show_default=True)
@click.option("--max-new-images", type=click.IntRange(0), default=32, show_default=True,
              help="Images one request may bring to be embedded.")
@click.option("--max-image-pixels", type=click.IntRange(1), default=2048 * 2048,
              show_default=True, help="An arriving image whose header claims more pixels is "
                                      "refused before decoding (at most the export's limit).")
@click.option("--image-cache", type=click.IntRange(0), default=100_000, show_default=True,
              help="Embeddings of new images kept per process (LRU).")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=0.0, show_default=True,
              help="How long a request's new images wait for other requests' when the image "
                   "model is idle (while it is busy, they queue and go together when it is "
                   "done).")
@click.option("--batch-images", type=click.IntRange(1), default=64, show_default=True,
              help="New images embedded in one call at most.")
def serve_cmd(model_dir, host, port, workers, models_root, admin_token_file, watch,
              max_body_bytes, max_candidates, max_behaviors, max_image_bytes, max_new_images,
              max_image_pixels, image_cache, batch_wait_ms, batch_images):
    """Serve an export over HTTP/JSON: POST /v1/score, POST /v1/reload, /healthz, /readyz,
    /metrics (docs/serving.md).

    \b
    Example:
      hvams serve models/day30 --port 8080 --admin-token-file /etc/hvams/token
    """
    import dataclasses
    import os
    import tempfile

    import uvicorn

    from hvams.serve.app import CONFIG_ENV, CONTROL_ENV, ServeConfig, Server, create_app
    from hvams.serve.export_tables import ExportError

    cfg = ServeConfig(model_dir=model_dir, host=host, port=port, workers=workers,
                      models_root=models_root, admin_token_file=admin_token_file,
                      max_body_bytes=max_body_bytes, max_candidates=max_candidates,
                      max_behaviors=max_behaviors, max_image_bytes=max_image_bytes,
                      max_new_images=max_new_images, max_image_pixels=max_image_pixels,
                      image_cache=image_cache, batch_wait_ms=batch_wait_ms,
                      batch_images=batch_images, watch=watch)
    with reported(ValueError, OSError):
        cfg.admin_token()   # an empty or unreadable token file is the user's to fix, now
    click.echo(f"hvams serve: {model_dir} on http://{host}:{port} ({workers} process"
               f"{'es' if workers > 1 else ''}; reload {'on' if admin_token_file else 'off'})",
               err=True)
    if workers == 1:
        with reported(ExportError, ValueError, OSError):
            server = Server(cfg)
            server.load_first()   # a bad export fails here, before the port opens
        uvicorn.run(create_app(cfg, server), host=host, port=port, log_level="warning")
        return
    shared = tempfile.mkdtemp(prefix="hvams-serve-")
    os.environ[CONFIG_ENV] = json.dumps(dataclasses.asdict(cfg))
    os.environ[CONTROL_ENV] = shared
    os.makedirs(os.path.join(shared, "metrics"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(shared, "metrics")
    import socket

    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config("hvams.serve.app:app_from_env", factory=True, host=host, port=port,
                            workers=workers, log_level="warning")
    sock = config.bind_socket()
    # uvicorn binds this socket with proto 0, so asyncio does not set TCP_NODELAY on the
    # connections it accepts, and every answer (headers, then body) waits out a 40 ms
    # delayed ACK; Linux copies the option from the listening socket to each connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(config, sockets=[sock]).run()
