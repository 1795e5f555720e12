"""AUC / GAUC / logloss against scikit-learn, with ties and single-class users."""
import math

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from hvams.metrics import auc, evaluate, gauc, logloss


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 400))
        y = rng.integers(0, 2, n)
        s = rng.integers(0, 6, n) / 5.0  # heavy ties
        if y.min() == y.max():
            continue
        assert math.isclose(auc(y, s), roc_auc_score(y, s), rel_tol=1e-12)


def test_gauc_matches_per_user_sklearn():
    rng = np.random.default_rng(1)
    n = 3000
    users = rng.integers(0, 150, n)
    y = (rng.random(n) < 0.3).astype(int)
    y[users < 10] = 1      # single-class users: skipped
    y[(users >= 10) & (users < 20)] = 0
    s = np.round(rng.random(n) * 10) / 10 + 0.2 * y
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if y[m].min() == y[m].max():
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    assert math.isclose(gauc(y, s, users), num / den, rel_tol=1e-12)


def test_logloss_and_evaluate_record():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert math.isclose(logloss(y, p), log_loss(y, p), rel_tol=1e-9)
    users = rng.integers(0, 20, 500)
    new = rng.random(500) < 0.2
    rec = evaluate(y, p, users, new, p_true=np.clip(p + 0.1 * y, 0, 1))
    assert math.isclose(rec["new_ad_auc"], roc_auc_score(y[new], p[new]), rel_tol=1e-12)
    assert rec["new_ad_n"] == int(new.sum()) and rec["oracle_auc"] > rec["auc"]
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
