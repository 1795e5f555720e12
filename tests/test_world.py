"""The synthetic visual world: determinism, statistics, and signal in the images."""
import hashlib
import json

import numpy as np
import pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from hvams.data.render import ATTRIBUTES
from hvams.data.synth import preset
from hvams.pretrain import synthesize_world
from hvams.metrics import auc
from hvams.store.lmdb_store import ImageStore, read_manifest


def _digest(root):
    h = hashlib.sha256()
    for path in sorted(root.glob("day=*/part-*.parquet")):
        h.update(path.read_bytes())
    h.update(json.dumps(read_manifest(root / "images")["partition_files"], sort_keys=True).encode())
    h.update((root / "backbone" / "small-cnn.pt").read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path, tiny_world):
    import torch

    again = tmp_path / "again"
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the pretrained backbone must not depend on the thread count
    try:
        synthesize_world(again, preset("tiny"), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert _digest(again) == _digest(tiny_world)
    other = tmp_path / "other"
    synthesize_world(other, preset("tiny", seed=1, train_days=1), progress=False)
    assert _digest(other) != _digest(tiny_world)


def test_world_statistics(tiny_world):
    info = json.loads((tiny_world / "world.json").read_text())
    cfg = info["config"]
    s = info["stats"]
    assert s["samples"] == (cfg["train_days"] + 1) * cfg["samples_per_day"]
    assert 25 <= s["mean_behaviors"] <= 35       # the paper's 32.6, capped
    assert abs(s["test_new_ad_share"] - cfg["new_ad_frac"]) < 0.03
    assert s["images_stored"] == s["images"] < cfg["items"]  # items share images
    assert 0.6 < info["oracle"]["test_auc"] < 0.95
    # new ads never appear in the training days, neither as ads nor in behaviors
    items = pq.read_table(tiny_world / "truth/items.parquet")
    new_ids = set(np.asarray(items["item_id"])[np.asarray(items["is_new_ad"])].tolist())
    for day in info["train_days"]:
        t = pq.read_table(tiny_world / day, columns=["ad_id", "beh_item", "is_new_ad"])
        assert not new_ids & set(t["ad_id"].to_pylist())
        assert not new_ids & {x for row in t["beh_item"].to_pylist() for x in row}
        assert sum(t["is_new_ad"].to_pylist()) == 0
    test = pq.read_table(tiny_world / info["test_day"], columns=["ad_id", "is_new_ad"])
    flagged = {a for a, f in zip(test["ad_id"].to_pylist(), test["is_new_ad"].to_pylist()) if f}
    assert flagged and flagged <= new_ids
    # every referenced image is in the store
    store = ImageStore(tiny_world / "images")
    t = pq.read_table(tiny_world / info["test_day"], columns=["ad_image"])
    keys = np.unique(np.asarray(t["ad_image"]))
    assert all(isinstance(v, bytes) for v in store.get_many(keys))


def _features(tiny_world, day, items):
    t = pq.read_table(tiny_world / day)
    attrs = {name: np.asarray(items[name]) for name in ATTRIBUTES}
    ad = np.asarray(t["ad_id"])
    y = np.asarray(t["click"])
    ids = np.stack([np.asarray(t[c]) for c in ("ad_id", "user_id", "category", "brand", "position",
                                                "gender")], 1)
    ad_attr = np.stack([attrs[n][ad] for n in ATTRIBUTES], 1)
    # taste evidence: share of the user's behaviors that match each ad attribute
    beh = t["beh_item"].to_pylist()
    match = np.array([[np.mean(attrs[n][np.array(b)] == attrs[n][a]) for n in ATTRIBUTES]
                      for a, b in zip(ad, beh)])
    cats = np.asarray(t["category"])
    cat_match = np.array([np.mean(np.asarray(items["category"])[np.array(b)] == c)
                          for c, b in zip(cats, beh)])
    return ids, ad_attr, match, cat_match, y, np.asarray(t["is_new_ad"]).astype(bool), np.asarray(t["p_true"])


def test_images_carry_the_signal(tiny_world):
    """ID-only LR stays clearly below the oracle; true visual attributes get close."""
    info = json.loads((tiny_world / "world.json").read_text())
    items = pq.read_table(tiny_world / "truth/items.parquet")
    train = [_features(tiny_world, d, items) for d in info["train_days"]]
    test = _features(tiny_world, info["test_day"], items)
    cat = lambda i: np.concatenate([t[i] for t in train])  # noqa: E731
    enc = OneHotEncoder(handle_unknown="ignore").fit(cat(0))
    id_lr = LogisticRegression(C=0.3, max_iter=2000).fit(enc.transform(cat(0)), cat(4))
    id_auc = auc(test[4], id_lr.decision_function(enc.transform(test[0])))

    def vis(f):
        from scipy.sparse import hstack, csr_matrix
        dense = np.hstack([np.log(f[2] + 0.02), f[3][:, None], f[0][:, 4:5]])
        return hstack([venc.transform(f[1]), csr_matrix(dense), enc.transform(f[0])]).tocsr()

    venc = OneHotEncoder(handle_unknown="ignore").fit(cat(1))
    vis_train = vis(tuple(cat(i) for i in range(5)))
    vis_lr = LogisticRegression(C=1.0, max_iter=2000).fit(vis_train, cat(4))
    vis_auc = auc(test[4], vis_lr.decision_function(vis(test)))
    oracle = auc(test[4], test[6])
    new = test[5]
    id_new = auc(test[4][new], id_lr.decision_function(enc.transform(test[0][new])))
    vis_new = auc(test[4][new], vis_lr.decision_function(vis(test)[new]))
    print(f"id-only {id_auc:.4f} (new {id_new:.4f}); true visual {vis_auc:.4f} (new {vis_new:.4f}); "
          f"oracle {oracle:.4f}")
    assert oracle - id_auc > 0.05, "ID-only must stay clearly below the oracle"
    assert oracle - vis_auc < 0.5 * (oracle - id_auc), "visual attributes must close most of the gap"
    assert vis_new - id_new > 0.05, "images must matter most for new ads"


def test_the_daily_world_turns_its_ids_over(tmp_path):
    """preset daily (small here): every day ~1% of the live ads are new and shown, users
    arrive and leave, so the IDs seen keep growing; is_new_ad marks ads born that day."""
    import pyarrow.parquet as pq

    from hvams.data.synth import synthesize

    info = synthesize(tmp_path, preset("daily", users=20_000, items=3_000, ads=1_500,
                                       samples_per_day=2_000, train_days=12), progress=False)
    assert info["config"]["ad_birth_rate"] == 0.01 and info["config"]["new_ad_frac"] == 0.0
    users, ads, ever, new_share = [], set(), set(), []
    for d in range(13):
        t = pq.ParquetFile(sorted((tmp_path / f"day={d:02d}").glob("*.parquet"))[0]).read()
        u, a = set(t["user_id"].to_pylist()), t["ad_id"].to_numpy()
        new = t["is_new_ad"].to_numpy().astype(bool)
        assert not (set(a[new].tolist()) & ads)      # a new ad was never shown before
        ads |= set(a.tolist())
        users.append(u)
        ever |= u
        new_share.append(new.mean())
    assert new_share[0] == 0 and 0.001 < np.mean(new_share[1:]) < 0.05
    assert len(users[0] & users[12]) < 0.3 * len(users[0])   # most of day 0's users are gone
    assert len(ever) > 3 * len(users[12])                     # and new ones came
