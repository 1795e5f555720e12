"""``hvams data ...`` and ``hvams images ...``."""
from __future__ import annotations

import json
import sys

import click

from .main import EXIT_FAILED, EXIT_USAGE, main


@main.group()
def data():
    """Sample data: synthesise the visual world, inspect Parquet days."""


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--preset", "preset_name", type=click.Choice(["tiny", "demo", "bench", "paper"]),
              default="demo",
              show_default=True, help="Size of the world.")
@click.option("--seed", type=int, default=None, help="World seed (default 0).")
@click.option("--users", type=int, default=None)
@click.option("--items", type=int, default=None)
@click.option("--ads", type=int, default=None)
@click.option("--days", "train_days", type=int, default=None, help="Training days (plus one test day).")
@click.option("--samples-per-day", type=int, default=None)
@click.option("--max-behaviors", type=int, default=None)
@click.option("--new-ad-frac", type=float, default=None, help="Share of test impressions on new ads.")
@click.option("--partitions", type=int, default=None, help="Image store partitions (default 64).")
@click.option("--image-format", type=click.Choice(["jpeg", "png"]), default=None)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
def synth(out, preset_name, overwrite, **overrides):
    """Write a synthetic visual world: Parquet days, LMDB images, world.json.

    \b
    Example:
      hvams data synth --out data/demo --preset demo
      hvams data synth --out data/t --preset tiny --seed 3 --days 2
    """
    from hvams.data.synth import preset, synthesize

    try:
        cfg = preset(preset_name, **overrides)
        info = synthesize(out, cfg, overwrite=overwrite)
    except (ValueError, FileExistsError) as exc:
        click.echo(f"hvams: error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE)
    s, o = info["stats"], info["oracle"]
    click.echo(f"wrote {out}: {s['samples']} samples ({info['config']['train_days']} train days + 1 "
               f"test day), {s['images']} images, mean behaviors {s['mean_behaviors']:.1f}, "
               f"CTR {s['ctr']:.3f}; oracle test AUC {o['test_auc']:.4f} GAUC {o['test_gauc']:.4f}; "
               f"peak RSS {info['peak_rss_mb']:.0f} MB")


@main.group()
def images():
    """The LMDB image store: ingest, verify, stats."""


@images.command("ingest")
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store directory.")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False),
              help="CSV with header image_key,path (JPEG/PNG files).")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Base for relative paths in --csv (default: the CSV's folder).")
@click.option("--bytes", "bytes_path", type=click.Path(exists=True, dir_okay=False),
              help="Parquet (image_key, image_bytes) or CSV (image_key, image_b64).")
@click.option("--partitions", type=int, default=None, help="Partitions of a new store (default 64).")
@click.option("--on-duplicate", type=click.Choice(["error", "skip", "overwrite"]), default="error",
              show_default=True, help="A key already stored with other bytes.")
@click.option("--threads", type=int, default=4, show_default=True, help="Decode-check threads.")
def ingest_cmd(store, csv_path, image_root, bytes_path, partitions, on_duplicate, threads):
    """Add images to a partitioned LMDB store (idempotent; re-runs extend it).

    Undecodable or unreadable inputs are rejected into STORE/rejects.jsonl.

    \b
    Example:
      hvams images ingest --store data/images --csv images.csv
      hvams images ingest --store data/images --bytes images.parquet --partitions 64
    """
    from hvams.store.ingest import format_summary, ingest, rows_from_bytes_table, rows_from_path_csv
    from hvams.store.lmdb_store import DuplicateKeyError

    if bool(csv_path) == bool(bytes_path):
        click.echo("hvams: error: give exactly one of --csv or --bytes", err=True)
        raise SystemExit(EXIT_USAGE)
    rows = rows_from_path_csv(csv_path, image_root) if csv_path else rows_from_bytes_table(bytes_path)
    try:
        summary = ingest(rows, store, num_partitions=partitions, on_duplicate=on_duplicate,
                         threads=threads)
    except (ValueError, DuplicateKeyError) as exc:
        click.echo(f"hvams: error: {exc}", err=True)
        raise SystemExit(EXIT_USAGE)
    click.echo(format_summary(summary))


@images.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--workers", type=int, default=2, show_default=True, help="Decoding processes.")
@click.option("--max-pixels", type=int, default=None, help="Reject images larger than this.")
@click.option("--json", "as_json", is_flag=True)
def verify(store, workers, max_pixels, as_json):
    """Decode every image and check partition checksums; exit 1 if any is bad.

    \b
    Example:
      hvams images verify data/demo/images
    """
    from hvams.store.decode import DEFAULT_MAX_PIXELS
    from hvams.store.verify import verify_store

    res = verify_store(store, workers=workers, max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    if as_json:
        click.echo(json.dumps(res, indent=1))
    else:
        click.echo(f"{res['images']} images decoded, {len(res['corrupt'])} corrupt, "
                   f"{len(res['checksum_mismatch'])} partition checksum mismatch(es)")
        for c in res["corrupt"]:
            click.echo(f"  corrupt: {c['image_key']} (id {c['id']}, partition {c['partition']}): "
                       f"{c['reason']}")
        for p in res["checksum_mismatch"]:
            click.echo(f"  checksum differs from the manifest: {p}")
    if res["corrupt"] or res["checksum_mismatch"]:
        sys.exit(EXIT_FAILED)


@images.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
def stats(store):
    """Counts, sizes and formats of a store.

    \b
    Example:
      hvams images stats data/demo/images
    """
    from hvams.store.verify import store_stats

    s = store_stats(store)
    click.echo(f"{s['images']} images in {s['partitions']} partitions "
               f"({s['images_per_partition']['min']}-{s['images_per_partition']['max']} per partition); "
               f"{s['bytes'] / 1e6:.2f} MB, mean {s['mean_bytes']:.0f} B, median {s['p50_bytes']:.0f} B, "
               f"max {s['max_bytes']} B; formats {s['formats']}")
