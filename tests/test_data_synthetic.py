"""The synthetic data set: deterministic, cached, varied, and learnable but not trivial."""
from __future__ import annotations

import numpy as np
import pytest

from ranking_exp.data.elwc import read_elwc
from ranking_exp.data.synthetic import CONTEXT_FEATURES, EXAMPLE_FEATURES, make_synthetic, oracle_score
from ranking_exp.errors import ConfigError

SMALL = dict(num_train=150, num_vali=40, num_test=300, seed=3)


def ndcg_at_k(labels: np.ndarray, scores: np.ndarray, k: int) -> float | None:
    """Gain 2^label - 1, discount 1/log2(rank + 1), ties in list order; None: nothing relevant."""
    gains = 2.0 ** np.asarray(labels, dtype=np.float64) - 1.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))[: min(k, len(gains))]
    ideal = (np.sort(gains)[::-1][:k] * discounts).sum()
    if ideal == 0:
        return None
    order = np.argsort(-np.asarray(scores), kind="stable")
    return float((gains[order][:k] * discounts).sum() / ideal)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("cache"), **SMALL)


def test_deterministic_bytes(small, tmp_path):
    other = make_synthetic(tmp_path / "elsewhere", **SMALL)
    assert other.root.name == small.root.name
    for split, info in small.splits.items():
        for a, b in zip(info.files, other.splits[split].files, strict=True):
            with open(a, "rb") as fa, open(b, "rb") as fb:
                assert fa.read() == fb.read()
    assert (small.root / "metadata.json").read_bytes() == (other.root / "metadata.json").read_bytes()
    changed = make_synthetic(tmp_path / "elsewhere", **{**SMALL, "seed": 4})
    assert changed.root != other.root
    assert changed.stats["bm25"].mean != small.stats["bm25"].mean


def test_second_call_reuses(small):
    mtimes = {p.name: p.stat().st_mtime_ns for p in small.root.iterdir()}
    again = make_synthetic(small.root.parent, **SMALL)
    assert again.root == small.root
    assert {p.name: p.stat().st_mtime_ns for p in again.root.iterdir()} == mtimes


def test_layout_spec_and_counts(small):
    spec = small.spec
    assert spec.context_names == list(CONTEXT_FEATURES)
    assert spec.example_names == list(EXAMPLE_FEATURES)
    assert {"noise_1", "noise_2", "noise_3", "doc_length", "freshness"} <= set(spec.example_names)
    assert {k: v.num_lists for k, v in small.splits.items()} == {"train": 150, "vali": 40, "test": 300}
    assert all(len(v.files) == 2 for v in small.splits.values())
    assert small.source["kind"] == "synthetic" and small.source["params"]["seed"] == 3


def test_lists_varied_and_within_bounds(small):
    lengths, query_lengths, popularity = [], set(), []
    for context, examples, labels in read_elwc(small.splits["train"].files, small.spec):
        lengths.append(len(labels))
        query_lengths.add(float(context["query_length"][0]))
        popularity.append(float(context["query_popularity"][0]))
        assert set(np.unique(labels).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
        assert all(v.shape == (len(labels), 1) for v in examples.values())
    assert min(lengths) >= 5 and max(lengths) <= 60
    assert len(set(lengths)) > 20
    assert sum(lengths) == small.splits["train"].num_docs
    assert len(query_lengths) >= 4 and np.std(popularity) > 0.1


def test_stats_match_read_back_and_scales_differ(small):
    rows = {name: [] for name in EXAMPLE_FEATURES}
    for _, examples, _ in read_elwc(small.splits["train"].files, small.spec):
        for name in EXAMPLE_FEATURES:
            rows[name].append(examples[name][:, 0])
    for name, parts in rows.items():
        v = np.concatenate(parts).astype(np.float64)
        s = small.stats[name]
        assert s.count == len(v)
        assert s.mean == pytest.approx(v.mean(), rel=1e-9)
        assert s.std == pytest.approx(v.std(), rel=1e-9)
        assert (s.min, s.max) == (v.min(), v.max())
    assert small.stats["query_length"].count == 150
    doc_length, pagerank = small.stats["doc_length"], small.stats["pagerank"]
    assert doc_length.mean > 1000 and doc_length.max > 10 * doc_length.mean  # heavy tail
    assert pagerank.max < 1 and pagerank.max / pagerank.min > 1e4


def test_oracle_far_above_random(small):
    rng = np.random.default_rng(0)
    oracle, random, no_relevant = [], [], 0
    for context, examples, labels in read_elwc(small.splits["test"].files, small.spec):
        score = ndcg_at_k(labels, oracle_score(context, examples), 10)
        if score is None:
            no_relevant += 1
            continue
        oracle.append(score)
        random.append(ndcg_at_k(labels, rng.random(len(labels)), 10))
    assert no_relevant < 0.2 * 300  # most lists have a relevant document
    assert 0.8 < np.mean(oracle) < 0.95  # learnable, but the noise keeps it from 1
    assert 0.3 < np.mean(random) < 0.5
    # The noise features carry no signal: ranking by one of them is as good as random.
    noise = [ndcg_at_k(l, e["noise_1"][:, 0], 10) for c, e, l in read_elwc(small.splits["test"].files, small.spec)]
    assert abs(np.mean([x for x in noise if x is not None]) - np.mean(random)) < 0.06


def test_bad_parameters(tmp_path):
    with pytest.raises(ConfigError, match="^num_train"):
        make_synthetic(tmp_path, num_train=0)
    with pytest.raises(ConfigError, match="^min_docs/max_docs"):
        make_synthetic(tmp_path, min_docs=10, max_docs=5)
    assert not any(tmp_path.iterdir())


def test_empty_split_left_out(tmp_path):
    data = make_synthetic(tmp_path, num_train=5, num_vali=0, num_test=3, min_docs=2, max_docs=3, num_shards=1)
    assert set(data.splits) == {"train", "test"}
