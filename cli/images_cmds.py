"""``hvams images ...``: the LMDB image store and backbones pretrained on it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hvams.pretrain import CROP_SCALE, EPOCHS

from .common import EXIT_FAILED, CliError, reported


@click.group()
def images():
    """The LMDB image store: ingest, verify, stats, and key -> id mapping."""


@images.command("ingest")
@click.option("--store", required=True, type=click.Path(file_okay=False), help="Store directory.")
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False),
              help="CSV with header image_key,path (JPEG, PNG, WebP, GIF, BMP or AVIF files).")
@click.option("--image-root", type=click.Path(exists=True, file_okay=False),
              help="Base for relative paths in --csv (default: the CSV's folder).")
@click.option("--bytes", "bytes_path", type=click.Path(exists=True, dir_okay=False),
              help="Parquet (image_key, image_bytes) or CSV (image_key, image_b64).")
@click.option("--partitions", type=int, default=None, help="Partitions of a new store (default 64).")
@click.option("--on-duplicate", type=click.Choice(["error", "skip", "overwrite"]), default="error",
              show_default=True, help="A key already stored with other bytes.")
@click.option("--threads", type=int, default=4, show_default=True, help="Decode-check threads.")
@click.option("--max-reject-rate", type=click.FloatRange(0, 1), default=None,
              help="Exit 1 when more than this share of the inputs was rejected (e.g. 0.01).")
@click.option("--strict", is_flag=True, help="Exit 1 on any rejected input (--max-reject-rate 0).")
def ingest_cmd(store, csv_path, image_root, bytes_path, partitions, on_duplicate, threads,
               max_reject_rate, strict):
    """Add images to a partitioned LMDB store (idempotent; re-runs extend it).

    Undecodable or unreadable inputs are rejected into STORE/rejects.jsonl; the
    summary counts them and names that file. With --strict or --max-reject-rate a
    pipeline that checks only exit codes sees them too (exit 1).

    \b
    Example:
      hvams images ingest --store data/images --csv images.csv
      hvams images ingest --store data/images --bytes images.parquet --partitions 64
    """
    from hvams.store.ingest import format_summary, ingest, rows_from_bytes_table, rows_from_path_csv

    if bool(csv_path) == bool(bytes_path):
        raise CliError("give exactly one of --csv or --bytes")
    rows = rows_from_path_csv(csv_path, image_root) if csv_path else rows_from_bytes_table(bytes_path)
    with reported(ValueError):  # DuplicateKeyError is one
        summary = ingest(rows, store, num_partitions=partitions, on_duplicate=on_duplicate,
                         threads=threads)
    click.echo(format_summary(summary))
    limit = 0.0 if strict else max_reject_rate
    rate = summary["rejected"] / summary["read"] if summary["read"] else 0.0
    if limit is not None and rate > limit:
        raise CliError(f"{summary['rejected']} of {summary['read']} inputs rejected "
                       f"({rate:.1%}), above the limit of {limit:.1%}; see {summary['rejects_file']}",
                       EXIT_FAILED)


@images.command("keys")
@click.argument("keys", nargs=-1)
@click.option("--file", "key_file", type=click.File("r"),
              help="One image key a line ('-': standard input).")
def keys_cmd(keys, key_file):
    """Print the int64 id of each image key: the ids Parquet image columns must hold.

    A decimal key below 2^63 is its own id; any other string maps to
    int.from_bytes(blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    & (2^63 - 1), after stripping surrounding whitespace. Output: key TAB id.

    \b
    Example:
      hvams images keys https://cdn.example/ad/1.jpg 42
      hvams images keys --file keys.txt > ids.tsv
    """
    from hvams.keys import image_key_id

    items = list(keys) + ([ln.rstrip("\n") for ln in key_file] if key_file else [])
    if not items:
        raise CliError("give image keys as arguments or with --file")
    for k in items:
        try:
            click.echo(f"{k}\t{image_key_id(k)}")
        except ValueError as exc:
            raise CliError(f"image key {k!r}: {exc}") from None


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


@images.command("place")
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False),
              help="The whole image store.")
@click.option("--servers", required=True, type=click.IntRange(min=1), help="Servers of the job.")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False),
              help="OpenMPI hostfile of the job (hosts in its order).")
@click.option("--hosts", help="Comma-separated host names instead of --hostfile.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Writes OUT/HOST/ for every host.")
@click.option("--copy", is_flag=True, help="Copy the files (default: hard links where possible).")
def place_cmd(store, servers, hostfile, hosts, out, copy):
    """Give each host only its servers' partitions (spread placement: server s on host s mod H).

    \b
    Example:
      hvams images place --store data/demo/images --servers 2 --hostfile hosts --out /tmp/placed
      # then copy /tmp/placed/HOST to each HOST, or with a shared file system:
      hvams train --images /tmp/placed/{node} --placement spread ...
    """
    from hvams.store.place import hosts_of, place

    if bool(hostfile) == bool(hosts):
        raise CliError("give exactly one of --hostfile and --hosts")
    with reported(ValueError, FileNotFoundError):
        names = hosts_of(hostfile) if hostfile else [h.strip() for h in hosts.split(",") if h.strip()]
        placed = place(store, servers, names, out, copy)
    for host, parts in placed.items():
        click.echo(f"{Path(out) / host}: {len(parts)} partitions"
                   + (f" ({parts[0]}..{parts[-1]})" if parts else " (no server here)"))


@images.command("pretrain")
@click.option("--store", required=True, type=click.Path(exists=True, file_okay=False),
              help="Image store whose images the backbone learns from.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the small-cnn state dict (use as backbone_weights).")
@click.option("--size", type=click.IntRange(min=8), default=32, show_default=True,
              help="Side in pixels; train with the same image_size.")
@click.option("--epochs", type=click.IntRange(min=1), default=EPOCHS, show_default=True,
              help="Contrastive epochs over the store (time grows in step).")
@click.option("--batch", type=click.IntRange(min=8), default=256, show_default=True,
              help="Images per step (each gives two views).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
@click.option("--max-images", type=click.IntRange(min=1), help="Pretrain on a seeded sample of this many.")
@click.option("--cluster-rounds", type=click.IntRange(min=0), default=1, show_default=True,
              help="DeepCluster rounds after the contrastive stage (k-means pseudo-labels).")
@click.option("--clusters", type=click.IntRange(min=2), default=256, show_default=True,
              help="k of the cluster rounds (at most one per 8 images).")
@click.option("--crop-scale", type=click.FloatRange(0.1, 1.0), default=CROP_SCALE, show_default=True,
              help="Smallest share of the image a contrastive view keeps (1: no zoom, only "
                   "aspect and shift; a zoom hides how many things an image shows).")
@click.option("--standardise/--no-standardise", default=True, show_default=True,
              help="Save the features' mean and std over the store with the weights, so a "
                   "frozen backbone gives the head unit-scale inputs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads (fix it for the same weights everywhere).")
@click.option("--probe", "truth", type=click.Path(exists=True, dir_okay=False),
              help="Truth table (e.g. DATA/truth/items.parquet): print linear-probe accuracy per "
                   "attribute, random init against pretrained.")
def pretrain_cmd(store, out, size, epochs, batch, lr, cluster_rounds, clusters, max_images,
                 crop_scale, standardise, seed, threads, truth):
    """Pretrain small-cnn on the store's own images, without labels (SimCLR + clusters).

    For images no available backbone was trained on: the result is a
    backbone_weights file; train with --backbone small-cnn --freeze-backbone
    at the same --image-size (docs/images.md, "A backbone for your own images").

    \b
    Example:
      hvams images pretrain --store data/posters/images --out runs/posters-ssl.pt
      hvams train --data data/posters --model dicm --backbone-weights runs/posters-ssl.pt \\
        --freeze-backbone --image-size 32
    """
    import time

    from hvams.pretrain.selfsup import load_store_pixels, pretrain_on_pixels

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with reported(ValueError, FileNotFoundError):
        pixels, ids, bad = load_store_pixels(store, size, max_images, seed, 4096 * 4096)
    click.echo(f"pretrain: {len(pixels)} images at {size} px"
               + (f", {bad} undecodable skipped" if bad else ""))
    result = pretrain_on_pixels(pixels, out, epochs, batch, lr, cluster_rounds=cluster_rounds,
                                clusters=clusters, seed=seed, threads=threads,
                                crop_scale=crop_scale, standardise=standardise, log=click.echo)
    click.echo(f"wrote {out}: small-cnn pretrained on {result['images']} images at {size} px, "
               f"{epochs} contrastive epochs (loss {result['loss_first']:.3f} -> "
               f"{result['loss_last']:.3f}), {cluster_rounds} cluster round(s) of "
               f"{result['clusters']}, {time.perf_counter() - t0:.0f} s")
    if truth:
        _probe_report(pixels, ids, out, truth, seed)


def _probe_report(pixels, ids, weights, truth, seed):
    import torch

    from hvams.models.attributes import attribute_labels
    from hvams.models.image import SmallCNN
    from hvams.pretrain.selfsup import backbone_features, linear_probe

    names, labels, known = attribute_labels(truth, ids)
    if not known.any():
        raise CliError(f"--probe {truth}: none of the store's images is in it")
    pixels = pixels[torch.from_numpy(known)]
    torch.manual_seed(seed)
    random_net, trained = SmallCNN(), SmallCNN()
    trained.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    for label, net in (("random init", random_net), ("pretrained", trained)):
        acc = linear_probe(backbone_features(net, pixels), labels, names, seed)
        click.echo(f"linear probe, {label}: " + ", ".join(f"{n} {a:.3f}" for n, a in acc.items()))
