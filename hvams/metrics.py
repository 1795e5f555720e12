"""AUC, GAUC and logloss, exact with ties (rank-average / Mann-Whitney U)."""
from __future__ import annotations

import math

import numpy as np


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Tied runs share the mean of their 1-based ranks.
    boundaries = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(s)]])
    mean_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(labels, scores) -> float:
    """ROC AUC; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return math.nan
    r = _average_ranks(s)
    return float((r[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def gauc(labels, scores, groups) -> float:
    """sum_u n_u * AUC_u / sum_u n_u over groups u with both classes."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    order = np.argsort(g, kind="mergesort")
    g, y, s = g[order], y[order], s[order]
    cuts = np.flatnonzero(np.diff(g)) + 1
    num = den = 0.0
    for lo, hi in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(g)]])):
        yy = y[lo:hi]
        pos = int(yy.sum())
        if pos == 0 or pos == hi - lo:
            continue
        num += (hi - lo) * auc(yy, s[lo:hi])
        den += hi - lo
    return num / den if den else math.nan


def logloss(labels, probs, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    if len(y) == 0:
        return math.nan
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate(labels, probs, users, new_ad=None, p_true=None) -> dict:
    """The evaluation record: overall, new-ad only and (if known) the oracle."""
    labels, probs, users = map(np.asarray, (labels, probs, users))
    out = {"n": int(len(labels)), "auc": auc(labels, probs), "gauc": gauc(labels, probs, users),
           "logloss": logloss(labels, probs)}
    if new_ad is not None:
        m = np.asarray(new_ad).astype(bool)
        out.update({"new_ad_n": int(m.sum()), "new_ad_auc": auc(labels[m], probs[m]),
                    "new_ad_gauc": gauc(labels[m], probs[m], users[m]),
                    "new_ad_logloss": logloss(labels[m], probs[m])})
    if p_true is not None:
        pt = np.asarray(p_true)
        out.update({"oracle_auc": auc(labels, pt), "oracle_gauc": gauc(labels, pt, users),
                    "oracle_logloss": logloss(labels, pt)})
        if new_ad is not None:
            out["oracle_new_ad_auc"] = auc(labels[m], pt[m])
    return out


class Scores:
    """The columns evaluation needs, gathered batch by batch on one rank."""

    KEYS = ("label", "prob", "user", "new", "p_true")

    def __init__(self, schema):
        self.schema = schema
        self.cols = {k: [] for k in self.KEYS}

    def add(self, batch, prob) -> None:
        s, v = self.schema, batch.values
        self.cols["label"].append(v[s.label])
        self.cols["prob"].append(prob)
        self.cols["user"].append(v[s.user])
        if s.new_ad and s.new_ad in v:
            self.cols["new"].append(v[s.new_ad])
        if s.p_true and s.p_true in v:
            self.cols["p_true"].append(v[s.p_true])

    def local(self) -> dict:
        """This rank's part, for ``evaluate_parts`` after a gather."""
        return {k: np.concatenate(c) if c else None for k, c in self.cols.items()}


def evaluate_parts(parts: list[dict]) -> dict:
    """``evaluate`` over the columns each rank scored (label, prob, user, new, p_true;
    a column a rank lacks is None)."""
    merged = {k: (np.concatenate([p[k] for p in parts if p[k] is not None])
                  if any(p[k] is not None for p in parts) else None) for k in Scores.KEYS}
    if merged["label"] is None:
        return {"n": 0}
    return evaluate(merged["label"], merged["prob"], merged["user"], merged["new"],
                    merged["p_true"])

