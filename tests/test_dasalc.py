"""Issue 7's model options from the literature: ``scorer=dasalc`` (listwise self-attention,
Qin et al. 2021) and ``scorer.input_noise`` (Gaussian-noise augmentation, training only)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from ranking_exp.cli import preflight
from ranking_exp.config import DASALCScorerConfig, DNNScorerConfig, register_configs
from ranking_exp.errors import ConfigError
from ranking_exp.model.packing import PADDING_SCORE, pack
from ranking_exp.model.scorers import build_scorer
from tests.helpers import compose_run, tiny

SMALL_DASALC = ["scorer=dasalc", "scorer.hidden_layer_dims=[16,8]", "scorer.head_size=8"]

pytestmark = pytest.mark.usefixtures("fresh_keras")


def _batch(spec, lists, width: int, rng: np.random.Generator) -> dict[str, tf.Tensor]:
    """``serving_features`` inputs of ``lists`` (``(context, examples, labels)``) padded to
    ``width`` with random values, which the model must ignore."""
    inputs = {f.name: np.stack([c[f.name] for c, _, _ in lists]) for f in spec.context}
    for f in spec.example:
        x = rng.normal(size=(len(lists), width, *f.shape)).astype(np.float32) * 5
        for i, (_, ex, _) in enumerate(lists):
            x[i, : len(ex[f.name])] = ex[f.name]
        inputs[f.name] = x
    mask = np.zeros((len(lists), width), dtype=bool)
    for i, (_, _, labels) in enumerate(lists):
        mask[i, : len(labels)] = True
    inputs[spec.mask_name] = mask
    return {k: tf.constant(v) for k, v in inputs.items()}


def test_dasalc_trains_exports_and_scores_each_list_as_a_whole(tmp_path: Path):
    from ranking_exp.data.elwc import read_elwc
    from ranking_exp.data.sources import prepare
    from ranking_exp.experiment import run_training
    from ranking_exp.metrics import evaluate_lists

    # 30 steps (tiny's 2 epochs of 120 lists, 8 per batch): enough to learn, ~20 s.
    run, cfg = compose_run(tmp_path, tiny([*SMALL_DASALC, "train.batch_size=8", "optimizer.learning_rate=0.01",
                                           "seed=1", "callbacks.tensorboard.enabled=false"]))
    assert isinstance(run.scorer, DASALCScorerConfig) and run.scorer.input_noise > 0
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="dasalc")
    for kind in ("last", "best"):
        export = Path(result.exports[kind])
        assert (export / "saved_model.pb").exists() and (export / "feature_spec.json").exists()
    assert all(math.isfinite(v) for v in result.metrics.values())

    data = prepare(run.dataset)
    lists = list(read_elwc(data.split("test").files, data.spec))
    rng = np.random.default_rng(0)
    labels = [y.astype(np.float32) for _, _, y in lists]
    random = np.mean([evaluate_lists(labels, [rng.random(len(y)) for y in labels], run.metrics)["ndcg_10"]
                      for _ in range(5)])
    assert result.metrics["test_ndcg_10"] > random + 0.1, (result.metrics["test_ndcg_10"], random)

    signatures = tf.saved_model.load(result.exports["best"]).signatures
    # a listwise scorer serves whole lists by default (ELWC), not one tf.Example per document
    assert (signatures["serving_default"].structured_input_signature
            == signatures["tensorflow/serving/predict"].structured_input_signature)
    serve = signatures["serving_features"]
    batch = lists[:8]
    width = max(len(y) for _, _, y in batch)
    sizes = [len(y) for _, _, y in batch]
    narrow = serve(**_batch(data.spec, batch, width, rng))["outputs"].numpy()
    again = serve(**_batch(data.spec, batch, width, rng))["outputs"].numpy()
    wide = serve(**_batch(data.spec, batch, width + 7, rng))["outputs"].numpy()
    for i, n in enumerate(sizes):
        # Padding (whatever its values, however wide) changes nothing; inference is deterministic.
        np.testing.assert_allclose(wide[i, :n], narrow[i, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(again[i, :n], narrow[i, :n])
        assert np.all(wide[i, n:] == np.float32(PADDING_SCORE))

    # Listwise: changing one document of list 0 changes the scores of the others in list 0,
    # and nothing in the other lists.
    i = int(np.argmax(sizes))
    changed = [(c, {k: v.copy() for k, v in ex.items()}, y) for c, ex, y in batch]
    for f in data.spec.example:
        changed[i][1][f.name][0] += 3.0
    moved = serve(**_batch(data.spec, changed, width, rng))["outputs"].numpy()
    assert np.abs(moved[i, 1:sizes[i]] - narrow[i, 1:sizes[i]]).max() > 1e-4
    for j, n in enumerate(sizes):
        if j != i:
            np.testing.assert_allclose(moved[j, :n], narrow[j, :n], rtol=1e-5, atol=1e-5)


def _model(scorer_cfg) -> tf.keras.Model:
    """The scorer as the model builder wires it (packed where univariate), on plain inputs."""
    scorer = pack(build_scorer(scorer_cfg))
    context = {"c": tf.keras.Input(shape=(1,), name="c")}
    example = {"f": tf.keras.Input(shape=(None, 3), name="f")}
    mask = tf.keras.Input(shape=(None,), dtype=tf.bool, name="mask")
    return tf.keras.Model(inputs={**context, **example, "mask": mask}, outputs=scorer(context, example, mask))


@pytest.mark.parametrize("scorer_cfg", [
    DNNScorerConfig(hidden_layer_dims=[8], input_noise=0.5),
    DNNScorerConfig(hidden_layer_dims=[8], input_noise=0.5, input_batch_norm=True),
    DASALCScorerConfig(hidden_layer_dims=[8, 4], head_size=4, input_noise=0.5),
], ids=["dnn", "dnn_input_batch_norm", "dasalc"])
def test_input_noise_in_training_only(tmp_path: Path, scorer_cfg):
    model = _model(scorer_cfg)
    rng = np.random.default_rng(0)
    x = {"c": rng.normal(size=(3, 1)).astype(np.float32), "f": rng.normal(size=(3, 5, 3)).astype(np.float32),
         "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=bool)}
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=True).numpy())
    inference = model(x, training=False).numpy()
    np.testing.assert_array_equal(model(x, training=False).numpy(), inference)
    np.testing.assert_array_equal(model(x).numpy(), inference)  # a bare call is inference too

    # The saved model serves without noise.
    model.save(str(tmp_path / "export"))
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    served = [next(iter(serve(**{k: tf.constant(v) for k, v in x.items()}).values())).numpy() for _ in range(2)]
    np.testing.assert_array_equal(served[0], served[1])
    np.testing.assert_allclose(served[0], inference, rtol=1e-6, atol=1e-6)


def test_without_input_noise_or_fast_layers_the_dnn_is_tf_rankings_own():
    import tensorflow_ranking as tfr

    assert type(build_scorer(DNNScorerConfig(fast_layers=False))) is tfr.keras.model.DNNScorer
    assert isinstance(build_scorer(DNNScorerConfig()), tfr.keras.model.DNNScorer)  # the default: a subclass


@pytest.mark.parametrize("overrides,message", [
    (["scorer.input_noise=-0.1"], "scorer.input_noise: must be >= 0 (got -0.1)"),
    (["scorer.input_noise=nan"], "scorer.input_noise: must be >= 0 (got nan)"),
    (["scorer=dasalc", "scorer.input_noise=-1"], "scorer.input_noise: must be >= 0 (got -1.0)"),
    (["scorer=dasalc", "scorer.num_heads=0"], "scorer.num_heads: must be > 0 (got 0)"),
    (["scorer=dasalc", "scorer.attention_dropout=1"], "scorer.attention_dropout: must be in [0, 1)"),
    (["scorer=dasalc", "scorer.hidden_layer_dims=[]"], "scorer.hidden_layer_dims: hidden dims must be positive"),
    (["scorer.numeric_embedding.kind=fourier"], "scorer.numeric_embedding.kind: 'fourier' not in ('none', 'periodic')"),
    (["scorer=dasalc", "scorer.numeric_embedding.sigma=0"], "scorer.numeric_embedding.sigma: must be > 0 (got 0.0)"),
    (["scorer.numeric_embedding.frequencies=0"], "scorer.numeric_embedding.frequencies: must be > 0 (got 0)"),
    (["scorer=dasalc", "scorer.numeric_embedding.dim=-2"], "scorer.numeric_embedding.dim: must be > 0 (got -2)"),
])
def test_bad_scorer_values_fail_in_one_line(overrides, message):
    register_configs()
    with pytest.raises(ConfigError) as e:
        preflight("config", overrides, multirun=False)
    assert str(e.value) == message


# --- scorer.numeric_embedding: periodic (PLR) embeddings, Gorishniy et al. 2022 ------------------------
def _embedding_cfg(**kw):
    from ranking_exp.config import NumericEmbeddingConfig

    return NumericEmbeddingConfig(kind="periodic", frequencies=4, dim=3, **kw)


@pytest.mark.parametrize("lite", [False, True], ids=["per_feature", "lite"])
def test_periodic_embedding_embeds_each_feature_on_its_own(lite):
    from ranking_exp.model.numeric_embedding import PeriodicEmbedding

    layer = PeriodicEmbedding(frequencies=4, sigma=1.0, dim=3, lite=lite)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = layer(x).numpy()
    assert y.shape == (6, 5 * 3) and np.all(y >= 0)  # ReLU
    assert len(layer.trainable_weights) == 3  # frequencies, linear maps, biases: all learned
    # Changing feature 2 moves its own 3 outputs and nothing else.
    moved = x.copy()
    moved[:, 2] += 0.7
    delta = np.abs(layer(moved).numpy() - y).reshape(6, 5, 3)
    assert delta[:, 2].max() > 1e-3
    assert np.all(np.delete(delta, 2, axis=1) == 0)
    # The layer is periodic in each feature with its frequencies' periods: x + 1/c gives x's value
    # when the feature has one frequency.
    one = PeriodicEmbedding(frequencies=1, sigma=1.0, dim=2, lite=lite)
    base = one(x).numpy()
    period = 1.0 / one.frequency.numpy()[:, 0]
    np.testing.assert_allclose(one(x + period).numpy(), base, atol=2e-4)
    # Rebuilt from its config, it is the same function given the same weights.
    again = PeriodicEmbedding.from_config(layer.get_config())
    again.build(x.shape)
    again.set_weights(layer.get_weights())
    np.testing.assert_array_equal(again(x).numpy(), y)


@pytest.mark.parametrize("scorer_cfg", [
    DNNScorerConfig(hidden_layer_dims=[8], fast_layers=False, numeric_embedding=_embedding_cfg(sigma=0.5)),
    DASALCScorerConfig(hidden_layer_dims=[8, 4], head_size=4, numeric_embedding=_embedding_cfg(lite=True)),
], ids=["dnn", "dasalc_lite"])
def test_numeric_embedding_feeds_the_scorer_and_survives_export(tmp_path: Path, scorer_cfg):
    model = _model(scorer_cfg)
    embedding = model.get_layer("numeric_embedding")
    assert embedding.frequency.shape == (4, 4)  # context feature c + 3 example features, 4 frequencies
    x = {"c": np.ones((2, 1), np.float32), "f": np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32),
         "mask": np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)}
    scores = model(x).numpy()
    # The frequencies are part of the function: scaling them changes the scores.
    embedding.frequency.assign(embedding.frequency * 3.0)
    assert np.abs(model(x).numpy() - scores)[x["mask"]].max() > 1e-5
    inference = model(x).numpy()
    model.save(str(tmp_path / "export"))
    serve = tf.saved_model.load(str(tmp_path / "export")).signatures["serving_default"]
    served = next(iter(serve(**{k: tf.constant(v) for k, v in x.items()}).values())).numpy()
    np.testing.assert_allclose(served, inference, rtol=1e-6, atol=1e-6)


def test_without_an_embedding_the_scorers_have_none():
    assert DNNScorerConfig().numeric_embedding.layer_kwargs() is None
    for cfg in (DNNScorerConfig(hidden_layer_dims=[8]), DASALCScorerConfig(hidden_layer_dims=[8, 4], head_size=4)):
        assert not [layer for layer in _model(cfg).layers if layer.name == "numeric_embedding"]
    # and an embedding alone makes the DNN ours (TF Ranking's has no such input)
    assert type(build_scorer(DNNScorerConfig(fast_layers=False, numeric_embedding=_embedding_cfg()))).__module__ \
        == "ranking_exp.model.scorers"


def test_dasalc_with_periodic_embedding_trains_and_ranks(tmp_path: Path):
    from ranking_exp.experiment import run_training

    run, cfg = compose_run(tmp_path, tiny([*SMALL_DASALC, "train.batch_size=8", "optimizer.learning_rate=0.01",
                                           "seed=1", "callbacks.tensorboard.enabled=false",
                                           "scorer.numeric_embedding.kind=periodic",
                                           "scorer.numeric_embedding.sigma=0.01"]))
    assert run.scorer.numeric_embedding.kind == "periodic" and run.scorer.numeric_embedding.sigma == 0.01
    result = run_training(run, cfg, launch_dir=str(tmp_path), run_name="dasalc_embedding")
    # tiny's synthetic lists: random orderings score ~0.55 NDCG@10 there, this DASALC without the
    # embedding 0.83, with it 0.90 (the paper's defaults: 48 frequencies, 24 wide, sigma 0.01)
    assert result.metrics["test_ndcg_10"] > 0.75, result.metrics
    saved = [name for name, _ in tf.train.list_variables(str(Path(result.exports["last"]) / "variables" / "variables"))]
    assert any("/frequency/.ATTRIBUTES" in name for name in saved), saved  # the learned frequencies ship
