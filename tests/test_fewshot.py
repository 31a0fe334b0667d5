"""Tests for the few-shot protocol, the batched logistic-regression solver, and the per-layer
evaluation of an embeddings file."""

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from fgbench.errors import DataError
from fgbench.evaluate import PROTOCOLS, evaluate_protocol, layer_features, load_embeddings, metric_rows
from fgbench.evaluate import fewshot
from fgbench.evaluate.fewshot import (
    PREDICT_TOL,
    episode_arrays,
    fewshot_accuracy,
    fit_logreg,
    fit_predict_logreg,
    logreg_objective,
    mean_ci95,
    predict_cosine_nn,
    predict_proba_logreg,
    sample_episode,
)

D = 64


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    """12 fine classes in 3 coarse classes (5, 4, 3 fine), 60 images each.

    Clustered Gaussians: coarse centre + fine offset + image noise, with 5
    augmented views per image; L2-normalised like real embeddings.
    """
    rng = np.random.RandomState(0)
    fine_per_coarse = [5, 4, 3]
    coarse_of_fine = np.repeat(np.arange(3), fine_per_coarse)
    coarse_mu = rng.randn(3, D) * 0.6 / np.sqrt(D)
    fine_mu = coarse_mu[coarse_of_fine] + rng.randn(12, D) * 0.5 / np.sqrt(D)
    fine = np.repeat(np.arange(12), 60)
    plain = fine_mu[fine] + rng.randn(len(fine), D) / np.sqrt(D)
    aug = plain[:, None] + rng.randn(len(fine), 5, D) * 0.5 / np.sqrt(D)
    return _unit(plain), _unit(aug), fine, coarse_of_fine[fine]


def _sklearn(Xs, ys, Xq, **kw):
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, **kw).fit(Xs, ys)
    return clf, clf.predict(Xq)


def _episodes(data, n, n_way=5):
    features, aug, fine, _ = data
    draws = [sample_episode(i, fine, n_way=n_way, n_shot=1, n_query=15) for i in range(n)]
    return episode_arrays(features, aug, draws, 5)


def test_batched_solver_matches_sklearn_predictions(data):
    Xs, ys, Xq, yq = _episodes(data, 200)
    pred = fit_predict_logreg(Xs, ys, Xq)
    pred_sk = np.stack([_sklearn(Xs[e], ys[e], Xq[e])[1] for e in range(len(Xs))])
    assert pred.shape == yq.shape == (200, 75)
    assert (pred == pred_sk).mean() >= 0.99
    acc, acc_sk = (pred == yq).mean(), (pred_sk == yq).mean()
    assert 0.3 < acc < 0.95  # a realistic, non-trivial task
    assert abs(acc - acc_sk) <= 0.003


@pytest.mark.parametrize("n_way", [5, "all"])
def test_batched_solver_matches_sklearn_objective_and_coefs(data, n_way):
    Xs, ys, _, _ = _episodes(data, 3, n_way=n_way)
    coef, intercept = fit_logreg(Xs, ys)
    for e in range(len(Xs)):
        clf, _ = _sklearn(Xs[e], ys[e], Xs[e, :1], tol=1e-12)
        ours = logreg_objective(Xs[e], ys[e], coef[e], intercept[e])
        ref = logreg_objective(Xs[e], ys[e], clf.coef_, clf.intercept_)
        assert ours <= ref + 1e-9  # at least as good as a tightly converged sklearn
        assert ours == pytest.approx(ref, rel=1e-9)
        np.testing.assert_allclose(coef[e], clf.coef_, atol=1e-5)
        b_ref = clf.intercept_ - clf.intercept_.mean()  # the intercepts' free shift
        np.testing.assert_allclose(intercept[e], b_ref, atol=1e-5)


@pytest.mark.parametrize("gram", [True, False])
def test_gram_and_primal_forms_reach_sklearns_optimum(data, monkeypatch, gram):
    """Both representations of W (coefficients on the centred supports with their Gram matrix,
    or W itself), forced whatever the cost model would pick, give the tightly converged
    scikit-learn objective and the same predictions."""
    monkeypatch.setattr(fewshot, "_use_gram", lambda K, S, D: gram)
    Xs, ys, Xq, _ = _episodes(data, 3, n_way="all")
    coef, intercept = fit_logreg(Xs, ys)
    for e in range(len(Xs)):
        clf, _ = _sklearn(Xs[e], ys[e], Xs[e, :1], tol=1e-12)
        ours = logreg_objective(Xs[e], ys[e], coef[e], intercept[e])
        assert ours == pytest.approx(logreg_objective(Xs[e], ys[e], clf.coef_, clf.intercept_), rel=1e-9)
    pred = fit_predict_logreg(Xs, ys, Xq)
    monkeypatch.setattr(fewshot, "_use_gram", lambda K, S, D: not gram)
    np.testing.assert_array_equal(pred, fit_predict_logreg(Xs, ys, Xq))


@pytest.mark.parametrize("gram", [True, False])
@pytest.mark.parametrize("C", [0.1, 10.0])
def test_regularisation_other_than_one_reaches_sklearns_optimum(data, monkeypatch, gram, C):
    """C scales the gradient and the Hessian product (skipped when C is 1): both forms reach the
    tightly converged scikit-learn fit at weaker and stronger regularisation."""
    monkeypatch.setattr(fewshot, "_use_gram", lambda K, S, D: gram)
    Xs, ys, _, _ = _episodes(data, 2, n_way="all")
    coef, intercept = fit_logreg(Xs, ys, C=C)
    for e in range(len(Xs)):
        clf = LogisticRegression(C=C, solver="lbfgs", max_iter=10000, tol=1e-12).fit(Xs[e], ys[e])
        ref = logreg_objective(Xs[e], ys[e], clf.coef_, clf.intercept_, C=C)
        assert logreg_objective(Xs[e], ys[e], coef[e], intercept[e], C=C) == pytest.approx(ref, rel=1e-9)
        np.testing.assert_allclose(coef[e], clf.coef_, atol=1e-5 * max(1.0, C))


def test_cost_model_picks_the_cheaper_form():
    """Gram form unless there are many more supports than dimensions (cost S^2 D + (K + 24)
    (S D + 6 S^2) against 13 (K + 24) S D: multiply-adds, 24 per float read by a product)."""
    assert fewshot._use_gram(5, 25, 2048)  # 5-way 1-shot, 5 views: 2.9e6 against 1.9e7
    assert fewshot._use_gram(5, 125, 2048)  # 5-way 5-shot (memory-bound): 4.2e7 against 9.7e7
    assert fewshot._use_gram(160, 800, 640)  # tieredImageNet: 1.21e9 against 1.22e9
    assert fewshot._use_gram(240, 1200, 2048)  # entity30: 5.9e9 against 8.4e9
    assert not fewshot._use_gram(20, 2000, 64)  # 5-shot all-way on 64-d: 1.3e9 against 7.3e7


def test_solver_takes_a_torch_device(data):
    """The device may be a torch.device (what a CUDA caller passes), not only a string."""
    Xs, ys, Xq, _ = _episodes(data, 3)
    np.testing.assert_array_equal(fit_predict_logreg(Xs, ys, Xq, device=torch.device("cpu")),
                                  fit_predict_logreg(Xs, ys, Xq))
    coef, _ = fit_logreg(Xs, ys, device=torch.device("cpu"))
    np.testing.assert_allclose(coef, fit_logreg(Xs, ys)[0])


@pytest.fixture(scope="module")
def wide():
    """The all-way shape at CI size: 68 classes (living17), 16 images each, 256-d, 5 views.
    Class separation chosen for a realistic accuracy (about 60 %)."""
    rng = np.random.RandomState(1)
    n_classes, dim = 68, 256
    fine = np.repeat(np.arange(n_classes), 16)
    plain = rng.randn(n_classes, dim)[fine] * 0.45 / np.sqrt(dim) + rng.randn(len(fine), dim) / np.sqrt(dim)
    aug = plain[:, None] + rng.randn(len(fine), 5, dim) * 0.5 / np.sqrt(dim)
    draws = [sample_episode(i, fine, n_way="all", n_shot=1, n_query=15) for i in range(200)]
    return episode_arrays(_unit(plain).astype(np.float32), _unit(aug).astype(np.float32), draws, 5)


def test_all_way_predictions_match_sklearn_over_200_episodes(wide, one_thread):
    """The default (prediction) tolerance against one scikit-learn fit per episode: 68 ways x 5
    views = 340 supports, 1,020 queries per episode. One thread on both sides: on a busy machine
    two threads per small matrix product spend most of their time waiting for each other."""
    Xs, ys, Xq, yq = wide
    pred = fit_predict_logreg(Xs, ys, Xq)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # float32 lbfgs line-search notes
        pred_sk = np.stack([_sklearn(Xs[e], ys[e], Xq[e])[1] for e in range(len(Xs))])
    assert (pred == pred_sk).mean() >= 0.995
    acc, acc_sk = (pred == yq).mean(), (pred_sk == yq).mean()
    assert 0.3 < acc < 0.9 and abs(acc - acc_sk) <= 0.001


def test_prediction_tolerance_reaches_the_optimum(wide):
    """At PREDICT_TOL the objective equals a tightly converged scikit-learn fit's to 1e-6
    relative, and the predictions equal those of our own fit at 1e-10."""
    Xs, ys, Xq, _ = (a[:4] for a in wide)
    coef, intercept = fit_logreg(Xs, ys, tol=PREDICT_TOL)
    for e in range(len(Xs)):
        clf, _ = _sklearn(Xs[e].astype(np.float64), ys[e], Xq[e, :1], tol=1e-12)
        ours = logreg_objective(Xs[e], ys[e], coef[e], intercept[e])
        ref = logreg_objective(Xs[e], ys[e], clf.coef_, clf.intercept_)
        assert ours == pytest.approx(ref, rel=1e-6)
    np.testing.assert_array_equal(fit_predict_logreg(Xs, ys, Xq), fit_predict_logreg(Xs, ys, Xq, tol=1e-10))


def test_rank_deficient_support_matches_sklearn(data):
    """Identical augmented views make the Gram matrix singular."""
    Xs, ys, Xq, _ = _episodes(data, 20)
    Xs = np.repeat(Xs[:, ::5], 5, axis=1)  # every view = the first view
    pred = fit_predict_logreg(Xs, ys, Xq)
    pred_sk = np.stack([_sklearn(Xs[e], ys[e], Xq[e])[1] for e in range(len(Xs))])
    assert (pred == pred_sk).mean() >= 0.99


def test_chunking_does_not_change_predictions(data):
    Xs, ys, Xq, _ = _episodes(data, 30)
    np.testing.assert_array_equal(
        fit_predict_logreg(Xs, ys, Xq), fit_predict_logreg(Xs, ys, Xq, chunk_size=7)
    )


def test_sampler_is_deterministic_and_disjoint(data):
    _, _, fine, coarse = data
    kw = dict(n_way=5, n_shot=2, n_query=15)
    s1, q1, c1 = sample_episode(3, fine, coarse, **kw)
    s2, q2, c2 = sample_episode(3, fine, coarse, **kw)
    s3, q3, _ = sample_episode(4, fine, coarse, **kw)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(q1, q2)
    np.testing.assert_array_equal(c1, c2)
    assert not (np.array_equal(s1, s3) and np.array_equal(q1, q3))
    assert s1.shape == (5, 2) and q1.shape == (5, 15) and len(set(c1)) == 5
    assert not set(s1.ravel()) & set(q1.ravel())
    assert len(set(s1.ravel()) | set(q1.ravel())) == 5 * 17
    for j, c in enumerate(c1):
        assert (fine[s1[j]] == c).all() and (fine[q1[j]] == c).all()


def test_all_way_uses_every_class(data):
    _, _, fine, _ = data
    for n_way in ("all", 50):
        _, _, classes = sample_episode(0, fine, n_way=n_way, n_shot=1, n_query=5)
        np.testing.assert_array_equal(classes, np.arange(12))


def test_classes_with_too_few_images_are_excluded():
    fine = np.repeat([0, 1, 2], [20, 20, 5])
    for i in range(20):
        _, _, classes = sample_episode(i, fine, n_way="all", n_shot=1, n_query=10)
        np.testing.assert_array_equal(classes, [0, 1])
    with pytest.raises(ValueError, match="at least 2 fine classes"):
        sample_episode(0, fine, n_way=2, n_shot=5, n_query=16)


@pytest.mark.parametrize("max_ways, expected_sizes", [(2, {2}), (None, {3, 4, 5})])
def test_intra_episodes_stay_inside_one_coarse_class(data, max_ways, expected_sizes):
    _, _, fine, coarse = data
    sizes, coarse_seen = set(), set()
    for i in range(40):
        s, q, classes = sample_episode(
            i, fine, coarse, n_shot=1, n_query=5, intra=True, max_ways=max_ways
        )
        assert len(np.unique(coarse[s.ravel()])) == 1
        assert len(np.unique(coarse[q.ravel()])) == 1
        if max_ways is None:  # SCGM: all fine classes of the coarse class
            assert set(classes) == set(np.unique(fine[coarse == coarse[s[0, 0]]]))
        sizes.add(len(classes))
        coarse_seen.add(coarse[s[0, 0]])
    assert sizes == expected_sizes
    assert coarse_seen == {0, 1, 2}


def test_mean_ci95_matches_hand_computation():
    values = [0.5, 0.6, 0.7, 0.8]
    mean, h = mean_ci95(values)
    sd = np.sqrt(((0.15**2 + 0.05**2) * 2) / 3)
    assert mean == pytest.approx(0.65)
    assert h == pytest.approx(scipy.stats.t.ppf(0.975, 3) * sd / 2)
    assert h == pytest.approx(0.205426, abs=1e-6)  # 3.182446 * 0.129099 / 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_shot=0), "n_shot"),
        (dict(n_shot=-1), "n_shot"),
        (dict(n_query=0), "n_query"),
        (dict(n_way=1), "n_way"),
        (dict(n_way="some"), "n_way"),
        (dict(intra=True, max_ways=1), "max_ways"),
        (dict(n_aug=6), "n_aug"),
        (dict(classifier="svm"), "classifier"),
        (dict(episodes=0), "episodes"),
    ],
)
def test_bad_arguments_raise(data, kwargs, message):
    features, aug, fine, coarse = data
    with pytest.raises(ValueError, match=message):
        fewshot_accuracy(features, aug, fine, coarse, **{"episodes": 2, **kwargs})
    skip = ("n_aug", "classifier", "episodes")
    sampler_kwargs = {k: v for k, v in kwargs.items() if k not in skip}
    if sampler_kwargs:
        with pytest.raises(ValueError, match=message):
            sample_episode(0, fine, coarse, **{"n_way": 5, **sampler_kwargs})


def test_fewshot_accuracy_end_to_end(data):
    features, aug, fine, coarse = data
    res = fewshot_accuracy(features, aug, fine, coarse, n_way=5, episodes=50)
    assert set(res) == {"accuracy", "ci95", "n", "per_episode", "draws_hash"}
    assert res["n"] == 50 and res["per_episode"].shape == (50,)
    assert 0 <= res["per_episode"].min() and res["per_episode"].max() <= 1
    assert (res["accuracy"], res["ci95"]) == pytest.approx(mean_ci95(res["per_episode"]))
    # Same episodes as the sampler: recompute episode 7 by hand with sklearn.
    s, q, _ = sample_episode(7, fine, coarse, n_way=5, n_shot=1, n_query=15)
    Xs = aug[s.ravel()].reshape(-1, D)
    ys = np.repeat(np.arange(5), 5)
    _, pred = _sklearn(Xs, ys, features[q.ravel()])
    assert res["per_episode"][7] == pytest.approx((pred == np.repeat(np.arange(5), 15)).mean())
    # Intra episodes with varying numbers of ways, and the cosine classifier.
    intra = fewshot_accuracy(features, aug, fine, coarse, n_way=5, episodes=30,
                             intra=True, max_ways=None)
    assert intra["per_episode"].shape == (30,)
    cos = fewshot_accuracy(features, aug, fine, coarse, n_way="all", episodes=20,
                           classifier="cosine_nn", n_aug=2)
    assert 1 / 12 < cos["accuracy"] <= 1


def test_cosine_nn_picks_the_most_similar_support():
    support = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]]])
    labels = np.array([[0, 1, 2]])
    query = np.array([[[2.0, 0.1], [0.1, 3.0], [-5.0, 0.0]]])
    np.testing.assert_array_equal(predict_cosine_nn(support, labels, query), [[0, 1, 2]])


def test_five_shot_matches_sklearn_on_the_same_episode(data):
    """5 shots x 5 views = 25 support vectors per class, fit by an independent sklearn LR."""
    features, aug, fine, coarse = data
    proto = {k: v for k, v in PROTOCOLS["fewshot_5way_5shot"].items() if k != "kind"}
    assert (proto["n_shot"], proto["n_aug"], proto["n_way"]) == (5, 5, 5)
    assert PROTOCOLS["fewshot_all_5shot"] == {**PROTOCOLS["fewshot_all"], "n_shot": 5}
    res = fewshot_accuracy(features, aug, fine, coarse, **{**proto, "episodes": 12})
    for e in (0, 11):
        s, q, classes = sample_episode(e, fine, coarse, n_way=5, n_shot=5, n_query=15)
        Xs = aug[s.ravel()].reshape(-1, D)  # way-major, then shot, then view
        ys = np.repeat(np.arange(5), 25)
        assert Xs.shape == (125, D) and (fine[s.ravel()].reshape(5, 5) == classes[:, None]).all()
        _, pred = _sklearn(Xs, ys, features[q.ravel()])
        assert res["per_episode"][e] == pytest.approx((pred == np.repeat(np.arange(5), 15)).mean())
    assert res["accuracy"] > fewshot_accuracy(features, aug, fine, coarse, episodes=12)["accuracy"]


def test_predict_proba_matches_sklearn(data):
    Xs, ys, Xq, _ = _episodes(data, 4)
    proba = predict_proba_logreg(Xs, ys, Xq)
    assert proba.shape == (4, 75, 5)
    np.testing.assert_allclose(proba.sum(2), 1, atol=1e-12)
    np.testing.assert_array_equal(proba.argmax(2), fit_predict_logreg(Xs, ys, Xq))
    np.testing.assert_allclose(np.log(proba), predict_proba_logreg(Xs, ys, Xq, log=True), atol=1e-12)
    for e in range(4):
        clf, _ = _sklearn(Xs[e], ys[e], Xq[e], tol=1e-10)
        np.testing.assert_allclose(proba[e], clf.predict_proba(Xq[e]), atol=1e-5)


def test_cosine_nn_respects_allowed_supports():
    support = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.1]]])
    labels = np.array([[0, 1, 2]])
    query = np.array([[[2.0, 0.1], [0.1, 3.0]]])
    allowed = np.array([[[False, True, True], [True, True, True]]])
    np.testing.assert_array_equal(predict_cosine_nn(support, labels, query, allowed=allowed), [[1, 1]])


def test_every_layer_is_evaluated(data, tmp_path):
    features, aug, fine, coarse = data
    path = tmp_path / "test.npz"
    np.savez(path, layers=np.array(["head", "backbone"]), fine=fine, coarse=coarse, index=np.arange(len(fine)),
             features_head=features, aug_features_head=aug,
             features_backbone=features[:, :8], aug_features_backbone=aug[:, :, :8])
    proto = {"name": "fewshot_5way", **PROTOCOLS["fewshot_5way"], "episodes": 5}
    run = {"dataset": "toy", "setting": "coarse_to_fine", "method": "m", "seed": 0}
    rows = metric_rows(path, proto, run, "hash")
    assert [(r["layer"], r["metric"]) for r in rows] == [("head", "accuracy"), ("backbone", "accuracy")]
    assert rows[0]["value"] == pytest.approx(fewshot_accuracy(features, aug, fine, coarse, episodes=5)["accuracy"])
    backbone = fewshot_accuracy(features[:, :8], aug[:, :, :8], fine, coarse, episodes=5)
    assert rows[1]["value"] == pytest.approx(backbone["accuracy"]) and rows[1]["value"] != rows[0]["value"]
    assert rows[0]["protocol"] == "fewshot_5way" and rows[0]["config_hash"] == "hash" and rows[1]["n"] == 5
    ret = evaluate_protocol(load_embeddings(path), {"name": "retrieval", **PROTOCOLS["retrieval"], "nmi": False})
    assert {layer for layer, *_ in ret} == {"head", "backbone"}
    with pytest.raises(DataError, match="layer 'logits' is not in the embeddings file"):
        layer_features(load_embeddings(path), "logits")
    np.savez(tmp_path / "old.npz", features=features, fine=fine)
    with pytest.raises(DataError, match="no 'layers' array"):
        load_embeddings(tmp_path / "old.npz")
