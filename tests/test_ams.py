"""AMS behaviour on real ranks: dedup, byte accounting, missing images, the image model."""
import json
import shutil

import lmdb

from hvams.keys import key_bytes
from hvams.store.lmdb_store import ImageStore
from hvams.store.partition import partition_file
from mpi_harness import metrics_of, train_ok


def _train(world, out, servers, workers, steps=5, batch=48, **keys):
    return train_ok(servers + workers, world, out, servers=servers, model="dicm", batch_size=batch,
                    max_steps=steps, **keys)


def test_dedup_across_workers_and_12_floats_per_image(tiny_world, tmp_path):
    s, _ = _train(tiny_world, tmp_path / "ams", 2, 3)
    img, b = s["images"], s["bytes"]
    # workers asked for more image keys than servers computed: shared images ran once
    assert img["requested_by_workers_total"] > img["unique_per_server_total"] > 0
    # trainable backbone, no feature cache: one backbone run per unique key per step
    assert img["backbone_runs"] == img["unique_per_server_total"]
    assert img["decoded"] <= img["unique_per_server_total"]  # plus the pixel cache
    # byte table: 12 float32 per worker-unique image key, each direction
    keys_sent = b["image_keys"] // 8
    assert keys_sent == img["requested_by_workers_total"]
    assert b["image_payload"] == keys_sent * 12 * 4
    train_keys = b["image_grads"] // (12 * 4)
    assert b["image_grads"] == train_keys * 48 and 0 < train_keys < keys_sent  # eval sends no grads
    assert b["allreduce_servers"] > 0 and b["allreduce_workers"] > 0
    assert len(img["model_sha256"]) == 1  # one image model on both servers


def test_store_in_server_moves_pixels(tiny_world, tmp_path):
    s, _ = _train(tiny_world, tmp_path / "sis", 2, 2, strategy="store-in-server")
    b = s["bytes"]
    keys_sent = b["image_keys"] // 8
    assert b["image_payload"] == keys_sent * (3 * 32 * 32 + 1)  # uint8 pixels + validity byte
    assert "image_grads" not in b and "allreduce_servers" not in b
    s2, _ = _train(tiny_world, tmp_path / "sis-frozen", 2, 2, strategy="store-in-server",
                   freeze_backbone=True)
    b2 = s2["bytes"]
    assert b2["image_payload"] == (b2["image_keys"] // 8) * (64 + 1) * 4  # features + flag
    assert s2["images"]["feature_cache_hit_rate"] > 0
    s3, _ = _train(tiny_world, tmp_path / "siw", 2, 2, strategy="store-in-worker")
    assert not any(k.startswith("image") for k in s3["bytes"])  # images never cross the network


def _damaged_world(tiny_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(tiny_world, world)
    store = ImageStore(world / "images")
    victims = []
    for p in store.partitions[:3]:
        key, data = next(store.iter_partition(p))
        victims.append((p, key, data))
    store.close()
    (p0, k0, _), (p1, k1, d1) = victims[0], victims[1]
    for p, key, value in ((p0, k0, None), (p1, k1, d1[:40])):
        env = lmdb.open(str(world / "images" / partition_file(p)), max_dbs=2)
        with env.begin(write=True) as txn:
            db = env.open_db(b"images", txn=txn)
            txn.delete(key_bytes(key), db=db) if value is None else txn.put(key_bytes(key), value, db=db)
        env.close()
    return world


def test_missing_and_corrupt_images_are_counted_and_training_goes_on(tiny_world, tmp_path):
    world = _damaged_world(tiny_world, tmp_path)
    s, res = _train(world, tmp_path / "run", 2, 2, steps=20, batch=100)
    img = s["images"]
    assert img["missing"] > 0 and img["corrupt"] > 0
    assert img["requested"] == img["served"] + img["missing"] + img["corrupt"]
    assert any("not in the store" in e for e in img["bad_examples"])
    assert s["steps"] == 20


def test_dicm_beats_idonly_on_demo(demo_world, tmp_path):
    info = json.loads((demo_world / "world.json").read_text())
    weights = demo_world / info["pretrained_backbone"]["file"]
    runs = {}
    for model, extra in (("idonly", {}), ("dicm", {"backbone_weights": weights,
                                                    "freeze_backbone": True})):
        out = tmp_path / model
        train_ok(4, demo_world, out, servers=2, model=model, batch_size=128, timeout=600, **extra)
        runs[model] = metrics_of(out)[-1]
    dicm, ids = runs["dicm"], runs["idonly"]
    print({k: (round(ids[k], 4), round(dicm[k], 4)) for k in ("auc", "gauc", "new_ad_auc")})
    assert dicm["auc"] > ids["auc"] + 0.01
    assert dicm["new_ad_auc"] > ids["new_ad_auc"] + 0.05
    assert dicm["auc"] < dicm["oracle_auc"]
