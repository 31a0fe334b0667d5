"""Per-episode / per-query results beside every metrics file (fgbench.evaluate.units): written by
``fgbench evaluate`` and ``fgbench combine``, one value per unit whose mean is the reported value,
and a hash of the draws that is the same for every method scored on the same units."""

import json

import numpy as np
import pytest

from fgbench.cli import main
from fgbench.evaluate import PROTOCOLS
from fgbench.evaluate.fewshot import draw_episodes, episode_arrays, fit_predict_logreg
from fgbench.evaluate.units import draws_hash, fewshot_draws_hash, load_units, write_units

N_FINE, PER_CLASS, D = 8, 20, 12


def _embeddings(seed):
    """One method's test embeddings: 8 fine classes in 2 coarse classes, 20 images each, layers
    ``head`` and ``backbone`` (5 augmented views) and ``probs`` (class probabilities)."""
    rng = np.random.RandomState(seed)
    fine = np.repeat(np.arange(N_FINE), PER_CLASS)
    mu = rng.randn(N_FINE, D)
    arrays = {"fine": fine, "coarse": fine // 4, "index": np.arange(len(fine)) * 3 + 7,
              "fine_names": np.array([f"f{i}" for i in range(N_FINE)]), "coarse_names": np.array(["a", "b"]),
              "layers": np.array(["head", "backbone", "probs"])}
    for layer in ("head", "backbone"):
        plain = (mu[fine] + rng.randn(len(fine), D)).astype(np.float32)
        arrays[f"features_{layer}"] = plain
        arrays[f"aug_features_{layer}"] = plain[:, None] + 0.5 * rng.randn(len(fine), 5, D).astype(np.float32)
    logits = 2 * np.eye(N_FINE)[fine] + rng.randn(len(fine), N_FINE)
    arrays["features_probs"] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return arrays


def _evaluate(tmp_path, method, arrays, protocol):
    emb = tmp_path / f"{method}.npz"
    np.savez(emb, **arrays)
    out = tmp_path / method / f"{protocol['name']}.json"
    run = {"dataset": "toy", "setting": "coarse_to_fine", "method": method, "seed": 0, "config_hash": "h"}
    argv = ["evaluate", "--spec", json.dumps(protocol), "--run", json.dumps(run), "--embeddings", str(emb),
            "--out", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text()), load_units(out.with_suffix(".npz"))


def _assert_means_match(rows, units):
    """Every row with a per-unit array: the array's mean is the row's value."""
    checked = 0
    for row in rows:
        values = units["units"][row["layer"]].get(row["metric"])
        if values is not None:
            assert values.dtype == np.float64 and values.ndim == 1
            assert values.mean() == pytest.approx(row["value"], rel=1e-12, abs=1e-15)
            checked += 1
    return checked


@pytest.mark.parametrize("name", ["fewshot_5way", "fewshot_intra", "retrieval", "closed_set"])
def test_two_methods_share_the_draws_hash_and_units_match_the_means(tmp_path, name):
    protocol = {"name": name, **PROTOCOLS[name], **({"episodes": 6} if "fewshot" in name else {})}
    rows_a, units_a = _evaluate(tmp_path, "method_a", _embeddings(0), protocol)
    rows_b, units_b = _evaluate(tmp_path, "method_b", _embeddings(1), protocol)
    assert units_a["draws_hash"] == units_b["draws_hash"] and len(units_a["draws_hash"]) == 64
    assert [r["value"] for r in rows_a] != [r["value"] for r in rows_b]  # different methods, different results
    for rows, units in ((rows_a, units_a), (rows_b, units_b)):
        assert units["protocol"] == name and units["layers"] == list(dict.fromkeys(r["layer"] for r in rows))
        per_unit = {"fewshot": 1, "retrieval": 6, "closed_set": 1}[protocol["kind"]]  # recall@1,2,4,8, map@r, r_precision
        assert _assert_means_match(rows, units) == per_unit * len(units["layers"])
    n_units = {"fewshot": 6, "retrieval": N_FINE * PER_CLASS, "closed_set": N_FINE * PER_CLASS}[protocol["kind"]]
    assert all(len(v) == n_units for layer in units_a["units"].values() for v in layer.values())


def test_fewshot_per_episode_accuracy_by_hand(tmp_path):
    protocol = {"name": "fewshot_5way", **PROTOCOLS["fewshot_5way"], "episodes": 4}
    arrays = _embeddings(2)
    _, units = _evaluate(tmp_path, "m", arrays, protocol)
    sampler = {k: protocol[k] for k in ("n_way", "n_shot", "n_query", "episodes", "intra", "max_ways")}
    draws = draw_episodes(arrays["fine"], arrays["coarse"], **sampler)
    Xs, ys, Xq, yq = episode_arrays(arrays["features_head"], arrays["aug_features_head"], draws, 5)
    expected = (fit_predict_logreg(Xs, ys, Xq, n_classes=5) == yq).mean(1)
    np.testing.assert_array_equal(units["units"]["head"]["accuracy"], expected)
    assert units["draws_hash"] == fewshot_draws_hash(draws, protocol)


def test_the_hash_changes_with_the_draws(tmp_path):
    arrays = _embeddings(0)
    base = {"name": "fewshot_5way", **PROTOCOLS["fewshot_5way"], "episodes": 6}
    draws = draw_episodes(arrays["fine"], arrays["coarse"], n_way=5, episodes=6)
    digest = fewshot_draws_hash(draws, base)
    assert fewshot_draws_hash(draws, {**base, "n_aug": 4}) != digest
    assert fewshot_draws_hash(draws[:5], base) != digest
    assert fewshot_draws_hash(draw_episodes(arrays["fine"], arrays["coarse"], n_way=5, episodes=6, n_query=14),
                              base) != digest
    assert draws_hash(index=np.arange(5), fine=np.zeros(5)) == draws_hash(fine=np.zeros(5, int), index=np.arange(5))
    assert draws_hash(index=np.arange(5), fine=np.zeros(5)) != draws_hash(index=np.arange(1, 6), fine=np.zeros(5))
    # Retrieval: the split's index and labels decide the units.
    _, retrieval = _evaluate(tmp_path, "m", arrays, {"name": "retrieval", **PROTOCOLS["retrieval"], "nmi": False})
    assert retrieval["draws_hash"] == draws_hash(index=arrays["index"], fine=arrays["fine"])


def test_combine_writes_units_with_the_methods_hash(tmp_path):
    protocol = {"name": "fewshot_5way", **PROTOCOLS["fewshot_5way"], "episodes": 5}
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for path, seed in zip(paths, (0, 1)):
        np.savez(path, **_embeddings(seed))
    combination = {"name": "ens", "kind": "ensemble", "classifier": "logreg",
                   "models": [{"method": "a", "layer": "head"}, {"method": "b", "layer": "backbone"}]}
    run = {"dataset": "toy", "setting": "coarse_to_fine", "method": "ens", "seed": 0, "config_hash": "c"}
    out = tmp_path / "ens" / "fewshot_5way.json"
    argv = ["combine", "--spec", json.dumps({"combination": combination, "protocol": protocol}),
            "--run", json.dumps(run), "--embeddings", *map(str, paths), "--out", str(out)]
    assert main(argv) == 0
    rows, units = json.loads(out.read_text()), load_units(out.with_suffix(".npz"))
    assert units["layers"] == ["head+backbone"] and _assert_means_match(rows, units) == 1
    _, single = _evaluate(tmp_path, "a", _embeddings(0), protocol)
    assert units["draws_hash"] == single["draws_hash"]


def test_write_and_load_round_trip(tmp_path):
    per_layer = {"a/b": {"map@r": [0.5, 1.0]}, "x": {"recall@1": np.array([1.0, 0.0, 1.0])}}
    write_units(tmp_path / "retrieval.npz", "abc", per_layer)
    got = load_units(tmp_path / "retrieval.npz")
    assert (got["draws_hash"], got["protocol"], got["layers"]) == ("abc", "retrieval", ["a/b", "x"])
    np.testing.assert_array_equal(got["units"]["a/b"]["map@r"], [0.5, 1.0])
    np.testing.assert_array_equal(got["units"]["x"]["recall@1"], [1.0, 0.0, 1.0])
    assert list(tmp_path.iterdir()) == [tmp_path / "retrieval.npz"]  # no temporary file left
