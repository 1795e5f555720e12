"""``hvams data ...``: the synthetic worlds."""
from __future__ import annotations

import click

from hvams.data.synth import PRESETS as PRESET_NAMES

from .common import reported


@click.group()
def data():
    """Sample data: synthesise a synthetic visual world (Parquet days + image store)."""


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--preset", "preset_name", type=click.Choice(list(PRESET_NAMES)),
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
@click.option("--taste-modes", type=int, default=None,
              help="Tastes per user; which fires depends on the ad's category (preset multimodal: 2).")
@click.option("--pretrain-images", type=int, default=None,
              help="Images to pretrain the world's small-cnn on (0: none; reuse another world's).")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
def synth(out, preset_name, overwrite, **overrides):
    """Write a synthetic visual world: Parquet days, LMDB images, world.json.

    \b
    Example:
      hvams data synth --out data/demo --preset demo
      hvams data synth --out data/t --preset tiny --seed 3 --days 2
    """
    from hvams.data.synth import preset
    from hvams.pretrain import synthesize_world

    with reported(ValueError, FileExistsError):
        info = synthesize_world(out, preset(preset_name, **overrides), overwrite=overwrite)
    click.echo(f"{_summary(out, info)}; peak RSS {info['peak_rss_mb']:.0f} MB")


def _summary(out, info: dict) -> str:
    s, o = info["stats"], info["oracle"]
    return (f"wrote {out}: {s['samples']} samples ({info['config']['train_days']} train days + 1 "
            f"test day), {s['images']} images, mean behaviors {s['mean_behaviors']:.1f}, "
            f"CTR {s['ctr']:.3f}; oracle test AUC {o['test_auc']:.4f} GAUC {o['test_gauc']:.4f}")


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--preset", "preset_name", type=click.Choice(["posters", "posters-tiny"]),
              default="posters", show_default=True, help="Size of the world.")
@click.option("--seed", type=int, default=None, help="World seed (default 0).")
@click.option("--visitors", type=int, default=None)
@click.option("--offers", type=int, default=None)
@click.option("--days", "train_days", type=int, default=None, help="Training days (plus one test day).")
@click.option("--samples-per-day", type=int, default=None)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
def posters(out, preset_name, overwrite, **overrides):
    """Write the second, independent world: PIL-drawn posters, its own schema and signal.

    Images come as JPEG files plus images.csv, ingested as `hvams images ingest --csv`
    would; no backbone is pretrained for it (docs/data.md, "The posters world").

    \b
    Example:
      hvams data posters --out data/posters
    """
    from hvams.data.posters import poster_preset, synthesize_posters

    with reported(ValueError, FileExistsError):
        info = synthesize_posters(out, poster_preset(preset_name, **overrides), overwrite=overwrite,
                                  log=click.echo)
    click.echo(_summary(out, info))


@data.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--preset", "preset_name", type=click.Choice(["mosaic", "mosaic-tiny"]),
              default="mosaic", show_default=True, help="Size of the world.")
@click.option("--seed", type=int, default=None, help="World seed (default 0).")
@click.option("--shoppers", type=int, default=None)
@click.option("--listings", type=int, default=None)
@click.option("--days", "train_days", type=int, default=None, help="Training days (plus one test day).")
@click.option("--samples-per-day", type=int, default=None)
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output directory.")
def mosaic(out, preset_name, overwrite, **overrides):
    """Write the third, independent world: numpy-drawn tile mosaics, a global visual
    appeal plus per-shopper tastes, its own schema.

    Images come as PNG bytes in images.parquet, ingested as `hvams images ingest --bytes`
    would (some are truncated, some keys never arrive); no backbone is pretrained for it
    (docs/data.md, "The mosaic world").

    \b
    Example:
      hvams data mosaic --out data/mosaic
    """
    from hvams.data.mosaic import mosaic_preset, synthesize_mosaic

    with reported(ValueError, FileExistsError):
        info = synthesize_mosaic(out, mosaic_preset(preset_name, **overrides), overwrite=overwrite,
                                 log=click.echo)
    o = info["oracle"]
    click.echo(f"{_summary(out, info)}; visual term alone AUC {o['test_visual_only_auc']:.4f}")
