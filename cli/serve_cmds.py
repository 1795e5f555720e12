"""``hvams export`` and ``hvams predict``."""
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
def predict_cmd(model_dir, day_dir, out, batch_size, as_json):
    """Score a day with an export, in one process without MPI.

    \b
    Example:
      hvams predict models/dicm --data data/demo/day=03 --out scores.parquet
    """
    from hvams.serve.predict import predict
    from hvams.train.report import format_metrics_table

    res = predict(model_dir, day_dir, out, batch_size)
    if as_json:
        click.echo(json.dumps(res, indent=1, default=float))
        return
    click.echo(format_metrics_table([{**res["metrics"], "model": res["model"], "step": res["step"]}]))
    c = res["counts"]
    click.echo(f"scored {res['rows']} samples into {out}; unknown image keys (missing-image "
               f"embedding): {c.get('unknown_images', 0)} of {c.get('images', 0)}")
