"""A deterministic synthetic ranking data set with known, learnable structure.

It lets the whole pipeline run (and be tested) without external data, and it is built so
that modelling choices show: graded labels 0-4 come from a hidden nonlinear function of
the features with context x example interactions (bm25 grows with query length; freshness
helps popular queries and slightly hurts rare ones) plus noise; ``doc_length`` and
``pagerank`` are heavy-tailed on very different scales, so log1p / standardization matter;
three pure-noise features reward models that ignore them. With the default constants the
oracle (the hidden function itself) reaches NDCG@10 ~0.87-0.89, random scores ~0.37-0.41.

Written through ``ElwcWriter`` into ``cache_root/synthetic-<hash of the parameters>`` with
the same atomic caching as converted LETOR data; same parameters give byte-identical shards.
"""
from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from ranking_exp.data.elwc import CONVERTER_VERSION, ElwcWriter, build_cached, cache_key
from ranking_exp.data.prepared import PreparedData, SplitInfo
from ranking_exp.data.spec import Feature, FeatureSpec
from ranking_exp.errors import ConfigError

GENERATOR_VERSION = "synthetic/1"
CONTEXT_FEATURES = ("query_length", "query_popularity")
EXAMPLE_FEATURES = ("bm25", "tfidf", "doc_length", "pagerank", "freshness", "click_rate",
                    "noise_1", "noise_2", "noise_3")
LABEL_THRESHOLDS = (-1.4, -0.2, 0.8, 1.8)  # latent score -> grades 0..4
LABEL_NOISE = 1.0  # std of per-document noise on the latent score
QUERY_NOISE = 1.0  # std of a per-query offset: varies how many relevant docs a list has


def synthetic_spec() -> FeatureSpec:
    """All features float32 with default 0; label ``relevance`` (default -1 = padding)."""
    return FeatureSpec(
        context=tuple(Feature(n) for n in CONTEXT_FEATURES),
        example=tuple(Feature(n) for n in EXAMPLE_FEATURES),
    )


def oracle_score(context: Mapping[str, np.ndarray], examples: Mapping[str, np.ndarray]) -> np.ndarray:
    """The hidden relevance function (float64, one score per document).

    Labels are this plus noise, thresholded; a perfect model can at best learn it. Takes
    the feature values as stored (float32), so it works on data read back from shards.
    """
    ql = float(np.asarray(context["query_length"], dtype=np.float64).reshape(-1)[0])
    pop = float(np.asarray(context["query_popularity"], dtype=np.float64).reshape(-1)[0])
    f = {k: np.asarray(examples[k], dtype=np.float64).reshape(-1) for k in EXAMPLE_FEATURES}
    text_match = f["bm25"] / np.sqrt(ql)
    return (1.6 * np.tanh((text_match - 6.0) / 3.0)
            + 4.0 * (f["tfidf"] - 0.15)
            - 0.4 * (np.log(f["doc_length"]) - 7.5) ** 2  # a sweet spot in log length
            + 0.25 * (np.log(f["pagerank"]) + 8.0)
            + f["freshness"] * (3.0 * pop - 0.6)  # context x example interaction
            + 2.0 * (f["click_rate"] - 0.25))


def generate_lists(rng: np.random.Generator, num_lists: int, min_docs: int, max_docs: int
                   ) -> Iterator[tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]]:
    """Yields ``(context, examples, labels)`` per list; values already rounded to float32."""
    for _ in range(num_lists):
        n = int(rng.integers(min_docs, max_docs + 1))
        ql = float(min(1 + rng.poisson(2.0), 10))
        pop = float(rng.beta(1.2, 3.0))
        topical = rng.normal(0.0, 1.0, n) + rng.normal(0.0, 0.5)  # hidden; shared by signals
        examples = {
            "bm25": np.maximum(0.0, 6.0 + 3.0 * topical + rng.normal(0.0, 2.0, n)) * np.sqrt(ql),
            "tfidf": np.clip(0.15 + 0.06 * topical + rng.normal(0.0, 0.05, n), 0.0, 1.0),
            "doc_length": np.exp(rng.normal(7.0, 1.1, n)),  # ~1100 median, tail to 10^5
            "pagerank": np.exp(rng.normal(-8.0, 1.5, n)),  # ~3e-4, spanning decades
            "freshness": np.exp(-rng.exponential(400.0, n) / 180.0),
            "click_rate": 1.0 / (1.0 + np.exp(-(0.8 * topical + rng.normal(0.0, 1.0, n) - 1.5))),
            "noise_1": rng.normal(0.0, 1.0, n),
            "noise_2": rng.uniform(0.0, 100.0, n),
            "noise_3": np.exp(rng.normal(0.0, 2.0, n)),
        }
        examples = {k: v.astype(np.float32) for k, v in examples.items()}
        context = {"query_length": np.float32([ql]), "query_popularity": np.float32([pop])}
        latent = oracle_score(context, examples) + rng.normal(0.0, LABEL_NOISE, n) + rng.normal(0.0, QUERY_NOISE)
        labels = np.digitize(latent, LABEL_THRESHOLDS).astype(np.float32)
        yield context, examples, labels


def make_synthetic(cache_root: str | Path, num_train: int = 2000, num_vali: int = 300, num_test: int = 300,
                   min_docs: int = 5, max_docs: int = 60, seed: int = 0, num_shards: int = 2,
                   progress: bool = False) -> PreparedData:
    """Generates (or reuses) the synthetic set under ``cache_root/synthetic-<hash>``.

    Each split has its own random stream (from ``seed`` and the split), so changing
    ``num_test`` leaves train unchanged. A split with 0 lists is left out.
    """
    from tqdm import tqdm

    counts = {"train": num_train, "vali": num_vali, "test": num_test}
    if num_train < 1:
        raise ConfigError(f"num_train: must be >= 1, got {num_train}")
    for name in ("vali", "test"):
        if counts[name] < 0:
            raise ConfigError(f"num_{name}: must be >= 0, got {counts[name]}")
    if seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {seed}")
    if min_docs < 1 or max_docs < min_docs:
        raise ConfigError(f"min_docs/max_docs: need 1 <= min_docs <= max_docs, got {min_docs}, {max_docs}")
    params = {"num_train": num_train, "num_vali": num_vali, "num_test": num_test, "min_docs": min_docs,
              "max_docs": max_docs, "seed": seed, "num_shards": num_shards}
    key = cache_key("synthetic", {"generator": GENERATOR_VERSION, "writer": CONVERTER_VERSION, **params})
    spec = synthetic_spec()

    def build(tmp: Path) -> PreparedData:
        splits: dict[str, SplitInfo] = {}
        stats = None
        with tqdm(total=sum(counts.values()), unit="list", file=sys.stderr, disable=None if progress else True,
                  desc="synthetic data") as bar:
            for i, (split, count) in enumerate(counts.items()):
                if count == 0:
                    continue
                rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
                with ElwcWriter(spec, tmp, split, num_shards, with_stats=split == "train") as w:
                    for context, examples, labels in generate_lists(rng, count, min_docs, max_docs):
                        w.write(examples, labels, context=context)
                        bar.update(1)
                    splits[split] = w.close()
                    if split == "train":
                        stats = w.stats
        source = {"kind": "synthetic", "generator_version": GENERATOR_VERSION,
                  "converter_version": CONVERTER_VERSION, "params": params, "key": key}
        return PreparedData(root=tmp, spec=spec, splits=splits, stats=stats, source=source)

    return build_cached(cache_root, key, build)
