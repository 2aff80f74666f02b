"""Metrics equal a NumPy reference under both conventions for lists without relevant docs."""
from __future__ import annotations

import numpy as np
import pytest

from ranking_exp.config import MetricsConfig
from ranking_exp.metrics import evaluate_lists


def _order(s):
    return np.argsort(-s, kind="stable")


def ndcg(l, s, k):
    o = _order(s)
    disc = 1 / np.log2(np.arange(2, len(l) + 2))
    dcg = ((2 ** l[o] - 1)[:k] * disc[:k]).sum()
    ideal = np.sort(2 ** l - 1)[::-1][:k]
    return dcg / (ideal * disc[: len(ideal)]).sum()


def average_precision(l, s):
    r = (l[_order(s)] > 0).astype(float)
    return ((np.cumsum(r) / np.arange(1, len(r) + 1)) * r).sum() / r.sum()


def reciprocal_rank(l, s):
    return 1 / (np.argmax(l[_order(s)] > 0) + 1)


@pytest.fixture(scope="module")
def lists():
    rng = np.random.default_rng(7)
    labels = [rng.integers(0, 3, size=n).astype(np.float32) for n in rng.integers(1, 40, size=300)]
    for i in range(0, 300, 9):
        labels[i][:] = 0  # a query without relevant documents
    scores = [rng.normal(size=len(l)).astype(np.float32) for l in labels]
    return labels, scores


def reference(labels, scores, keep):
    ref = {f"ndcg_{k}": [ndcg(labels[i], scores[i], k) for i in keep] for k in (1, 3, 5, 10)}
    ref["map"] = [average_precision(labels[i], scores[i]) for i in keep]
    ref["mrr"] = [reciprocal_rank(labels[i], scores[i]) for i in keep]
    return ref


def test_skip_convention_leaves_out_queries_without_relevant_documents(lists):
    labels, scores = lists
    keep = [i for i, l in enumerate(labels) if (l > 0).any()]
    got = evaluate_lists(labels, scores, MetricsConfig(), batch_size=64)
    for name, values in reference(labels, scores, keep).items():
        assert got[name] == pytest.approx(np.mean(values), abs=1e-5), name


def test_zero_convention_counts_them_as_zero(lists):
    labels, scores = lists
    keep = [i for i, l in enumerate(labels) if (l > 0).any()]
    got = evaluate_lists(labels, scores, MetricsConfig(lists_without_relevant="zero"))
    for name, values in reference(labels, scores, keep).items():
        assert got[name] == pytest.approx(np.sum(values) / len(labels), abs=1e-5), name


def test_perfect_ranking_scores_one(lists):
    labels, _ = lists
    got = evaluate_lists(labels, [l.copy() for l in labels], MetricsConfig())
    assert all(v == pytest.approx(1.0) for v in got.values())
