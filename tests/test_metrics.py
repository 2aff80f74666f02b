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


# A hand-computed example for metrics.convention=letor (LETOR 4.0's Eval-Score-4.0.pl) against
# the standard convention. Query A: labels (2, 0, 1) scored (0.1, 0.9, 0.5) ranks labels 0, 1, 2
# (gains 0, 1, 3; ideal 3, 1, 0). B has no relevant document. C has two documents, ranked 0, 1.
LETOR_LABELS = [np.array([2, 0, 1], np.float32), np.array([0, 0], np.float32), np.array([1, 0], np.float32)]
LETOR_SCORES = [np.array([0.1, 0.9, 0.5], np.float32), np.array([1.0, 2.0], np.float32),
                np.array([0.2, 0.3], np.float32)]
LOG2_3 = np.log2(3.0)


def test_letor_convention_differs_from_the_standard_one_exactly_where_expected():
    cfg = dict(ndcg_topn=[1, 2, 3], monitor="map")
    std = evaluate_lists(LETOR_LABELS, LETOR_SCORES, MetricsConfig(**cfg))
    letor = evaluate_lists(LETOR_LABELS, LETOR_SCORES, MetricsConfig(convention="letor", **cfg))
    # standard: discount 1/log2(rank + 1) (1, 1/log2 3, 1/2); B skipped, so means over A and C.
    a2, a3 = (1 / LOG2_3) / (3 + 1 / LOG2_3), (1 / LOG2_3 + 3 / 2) / (3 + 1 / LOG2_3)
    c2 = c3 = 1 / LOG2_3
    assert std["ndcg_1"] == pytest.approx(0.0, abs=1e-6)
    assert std["ndcg_2"] == pytest.approx((a2 + c2) / 2, abs=1e-5)
    assert std["ndcg_3"] == pytest.approx((a3 + c3) / 2, abs=1e-5)
    assert std["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 2) / 2, abs=1e-5)
    assert std["mrr"] == pytest.approx(0.5, abs=1e-5)
    # letor: discount 1, 1, 1/log2 3 (ranks 1 and 2 undiscounted); B counts as 0; C has fewer than
    # 3 documents, so its NDCG@3 is 0 (the script's missing entries); means over A, B and C.
    assert letor["ndcg_1"] == pytest.approx(0.0, abs=1e-6)
    assert letor["ndcg_2"] == pytest.approx((1 / 4 + 0 + 1) / 3, abs=1e-5)
    assert letor["ndcg_3"] == pytest.approx(((1 + 3 / LOG2_3) / 4 + 0 + 0) / 3, abs=1e-5)
    assert letor["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0 + 1 / 2) / 3, abs=1e-5)
    assert letor["mrr"] == pytest.approx((1 / 2 + 0 + 1 / 2) / 3, abs=1e-5)


def test_letor_convention_ranks_tied_scores_in_input_order():
    cfg = MetricsConfig(convention="letor", ndcg_topn=[1], monitor="ndcg_1")
    tie = [np.array([0.5, 0.5], np.float32)]
    assert evaluate_lists([np.array([0, 1], np.float32)], tie, cfg)["ndcg_1"] == 0.0
    assert evaluate_lists([np.array([1, 0], np.float32)], tie, cfg)["ndcg_1"] == 1.0


def test_letor_convention_scores_a_perfect_ranking_one_when_every_query_has_k_documents(lists):
    labels, _ = lists
    keep = [l for l in labels if (l > 0).any() and len(l) >= 10]
    got = evaluate_lists(keep, [l.copy() + np.arange(len(l))[::-1] * 1e-3 for l in keep],
                         MetricsConfig(convention="letor"))
    assert all(v == pytest.approx(1.0) for v in got.values()), got
