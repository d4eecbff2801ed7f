"""Evaluation maths against scikit-learn and small hand-computed cases."""

import csv

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, top_k_accuracy_score

from cifar100cnn import artifacts, data, evaluation


def one_hot_proba(labels, num_classes=100, confidence=0.9):
    proba = np.full((len(labels), num_classes), (1 - confidence) / (num_classes - 1), np.float32)
    proba[np.arange(len(labels)), labels] = confidence
    return proba


@pytest.fixture
def random_predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(300, 100)).astype(np.float32)
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_true = rng.integers(0, 100, 300)
    return y_true, proba


def test_top_k_hand_computed():
    # Three classes padded to 100: class scores rank 2 > 1 > 0 for every row.
    proba = np.zeros((3, 100), np.float32)
    proba[:, :3] = [0.1, 0.3, 0.6]
    y_true = np.array([2, 1, 0])
    assert evaluation.top_k_accuracy(y_true, proba, 1) == pytest.approx(1 / 3)
    assert evaluation.top_k_accuracy(y_true, proba, 2) == pytest.approx(2 / 3)
    assert evaluation.top_k_accuracy(y_true, proba, 3) == pytest.approx(1.0)


def test_top_k_matches_sklearn(random_predictions):
    y_true, proba = random_predictions
    for k in (1, 5):
        expected = top_k_accuracy_score(y_true, proba, k=k, labels=np.arange(100))
        assert evaluation.top_k_accuracy(y_true, proba, k) == pytest.approx(expected)


def test_superclass_accuracy_maps_fine_predictions():
    # True class 0 (apple, fruit_and_vegetables) predicted as 57 (pear, same superclass): right.
    # True class 3 (bear, large_carnivores) predicted as 0 (apple): wrong.
    y_true = np.array([0, 3])
    proba = one_hot_proba([57, 0])
    assert data.FINE_TO_COARSE[0] == data.FINE_TO_COARSE[57]
    assert evaluation.superclass_accuracy(y_true, proba, data.FINE_TO_COARSE) == 0.5
    # Synthetic superclasses are fine // 5: 7 -> 1 and 9 -> 1 agree, 10 -> 2 does not.
    y_syn = np.array([7, 7])
    assert evaluation.superclass_accuracy(y_syn, one_hot_proba([9, 10]), data.SYNTHETIC_FINE_TO_COARSE) == 0.5


def test_superclass_accuracy_matches_sklearn(random_predictions):
    y_true, proba = random_predictions
    f2c = data.FINE_TO_COARSE
    expected = accuracy_score(f2c[y_true], f2c[proba.argmax(axis=1)])
    assert evaluation.superclass_accuracy(y_true, proba, f2c) == pytest.approx(expected)


def test_ece_hand_computed():
    # Two images at confidence 0.95 (one right, one wrong) and two at 0.65 (both right):
    # bin (0.9, 1]: |0.5 - 0.95| = 0.45; bin (0.6, 0.7]: |1.0 - 0.65| = 0.35; mean 0.4.
    proba = one_hot_proba([0, 0, 1, 1], confidence=0.95)
    proba[2:] = one_hot_proba([1, 1], confidence=0.65)
    y_true = np.array([0, 5, 1, 1])
    assert evaluation.expected_calibration_error(y_true, proba, n_bins=10) == pytest.approx(0.4)
    confidence, accuracy, counts = evaluation.reliability_bins(y_true, proba, n_bins=10)
    assert counts.sum() == 4 and counts[9] == 2 and counts[6] == 2
    assert accuracy[9] == pytest.approx(0.5) and confidence[6] == pytest.approx(0.65)


def test_ece_zero_when_perfectly_calibrated():
    # Confidence 1.0 and always right; confidence exactly on a bin edge stays in range.
    proba = one_hot_proba(np.arange(10), confidence=1.0)
    assert evaluation.expected_calibration_error(np.arange(10), proba) == pytest.approx(0.0, abs=1e-6)


def _hand_made_case():
    """Five test images of CIFAR-100 with chosen top predictions (the rest of each row's
    probability spread thinly over the other classes):

    image  true            predicted (probability)              top-5  superclass (CIFAR / fine // 5)
      0    0 apple         0 apple .62                          yes    right / right
      1    0 apple         57 pear .52, 0 apple .30             yes    right (fruit) / wrong (0 vs 11)
      2    3 bear          1 aquarium_fish .72, 10, 20, 30, 40  no     wrong / right (0 vs 0)
      3    57 pear         57 pear .92                          yes    right / right
      4    1 aquarium_fish 0 apple .42, 1 aquarium_fish .35     yes    wrong / right (0 vs 0)
    """
    top = [{0: 0.62}, {57: 0.52, 0: 0.30}, {1: 0.72, 10: 0.10, 20: 0.08, 30: 0.05, 40: 0.03},
           {57: 0.92}, {0: 0.42, 1: 0.35}]
    proba = np.zeros((5, 100), np.float32)
    for row, chosen in zip(proba, top):
        rest = [c for c in range(100) if c not in chosen]
        row[rest] = (1 - sum(chosen.values())) / len(rest)
        row[list(chosen)] = list(chosen.values())
    return np.array([0, 0, 3, 57, 1]), proba


def test_every_column_of_a_results_row_on_a_hand_made_case():
    y_true, proba = _hand_made_case()
    row = evaluation.evaluate("baseline", y_true, proba, data.FINE_TO_COARSE, params=1234,
                              images_per_s=56.5)
    # macro-F1 over all 100 classes (absent ones count 0): class 0 has 1 right, 1 false
    # alarm (image 4), 1 miss (image 1): F1 = 2/(2+1+1) = 1/2; class 57: 1 right, 1 false
    # alarm (image 1): 2/3; classes 1 and 3: 0. Micro-F1 would be the accuracy, 0.4.
    # ECE: every image in a bin of its own (15 bins), so the mean of |right - confidence|.
    expected = {
        "model": "baseline",
        "top1": 2 / 5,
        "top5": 4 / 5,
        "superclass_acc": 3 / 5,  # the fine // 5 grouping of the synthetic data would give 4/5
        "macro_f1": (1 / 2 + 2 / 3) / 100,
        "ece": (0.38 + 0.52 + 0.72 + 0.08 + 0.42) / 5,
        "params": 1234,
        "images_per_s": 56.5,
        "n_test": 5,
        "original_reported_top1": 0.2992,
    }
    assert row == pytest.approx(expected, abs=1e-6)
    assert set(row) <= set(evaluation.RESULT_COLUMNS)


def test_evaluate_row_and_csv(tmp_path, random_predictions):
    y_true, proba = random_predictions
    row = evaluation.evaluate("baseline", y_true, proba, data.FINE_TO_COARSE, params=10, images_per_s=5.0)
    assert row["top1"] == pytest.approx(accuracy_score(y_true, proba.argmax(axis=1)))
    assert row["n_test"] == 300 and row["original_reported_top1"] == 0.2992
    path = evaluation.save_results([row], tmp_path / "models" / "results.csv")
    with open(path) as handle:
        saved = list(csv.DictReader(handle))
    assert {"model", "top1", "top5", "superclass_acc", "n_test"} <= set(saved[0])
    assert float(saved[0]["top5"]) == pytest.approx(row["top5"], abs=1e-6)
    assert "baseline" in evaluation.format_table([row])


def test_probabilities_saved_as_float16(tmp_path, random_predictions):
    _, proba = random_predictions
    path = evaluation.save_probabilities("third", proba, tmp_path)
    assert path.endswith("cifar100_third_proba.npy")
    assert artifacts.load_array(path).dtype == np.float16


def test_per_class_best_worst_and_confusion():
    names = [f"c{i}" for i in range(100)]
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 2, 1, 1])
    scores = evaluation.per_class_scores(y_true, y_pred, names)
    assert scores[0]["f1"] == 1.0 and scores[0]["support"] == 2
    assert scores[2]["recall"] == 0.0
    best, worst = evaluation.best_and_worst(scores[:3], k=1)
    assert best[0]["name"] == "c0" and worst[0]["name"] == "c2"
    matrix = evaluation.fine_confusion(y_true, y_pred)
    assert matrix.shape == (100, 100) and matrix[2, 1] == 2
    assert evaluation.most_confused_pairs(matrix, names, k=2) == [("c2", "c1", 2), ("c1", "c2", 1)]
    coarse = evaluation.superclass_confusion(y_true, y_pred, data.SYNTHETIC_FINE_TO_COARSE)
    assert coarse.shape == (20, 20) and coarse[0, 0] == 6


def test_superclass_order_groups_blocks():
    order = evaluation.superclass_order(data.FINE_TO_COARSE)
    assert sorted(order) == list(range(100))
    assert np.all(np.diff(data.FINE_TO_COARSE[order]) >= 0)


def test_misclassified_and_top_labels():
    y_true = np.array([0, 1, 2, 3])
    proba = one_hot_proba([0, 2, 2, 0])
    assert list(evaluation.misclassified(y_true, proba, count=5)) == [1, 3]
    top = evaluation.top_k_labels(proba[1], [f"c{i}" for i in range(100)], 3)
    assert top[0] == ("c2", pytest.approx(0.9)) and len(top) == 3


def test_load_models_skips_missing(tmp_path, capsys):
    assert evaluation.load_models(tmp_path) == {}
    out = capsys.readouterr().out
    assert "ThirdModel.ipynb" in out and "TrainingModels.ipynb" in out


def test_load_artifacts_stops_cleanly(tmp_path):
    with pytest.raises(evaluation.NothingToEvaluate, match="TrainingModels.ipynb"):
        evaluation.load_artifacts(tmp_path)  # no arrays
    x, y = data.make_synthetic(1, 5, seed=0)[1]
    artifacts.save_array(x, tmp_path / "arrays" / artifacts.X_TEST_FILE)
    artifacts.save_array(y, tmp_path / "arrays" / artifacts.Y_TEST_FILE)
    with pytest.raises(evaluation.NothingToEvaluate, match="no saved models") as info:
        evaluation.load_artifacts(tmp_path)
    assert info.value._render_traceback_() == [f"Stopped: {info.value}"]


def test_missing_test_arrays_are_written_from_the_dataset_once(tmp_path):
    assert evaluation.ensure_test_arrays(tmp_path, quick=True, seed=3)
    x_test, y_test = artifacts.load_test_arrays(tmp_path / "arrays")
    expected = data.load_dataset(quick=True, seed=3)
    np.testing.assert_array_equal(x_test, expected.x_test)
    np.testing.assert_array_equal(y_test, expected.y_test)
    artifacts.save_array(y_test[::-1].copy(), tmp_path / "arrays" / artifacts.Y_TEST_FILE)
    assert not evaluation.ensure_test_arrays(tmp_path, quick=True, seed=3)  # existing: untouched
    np.testing.assert_array_equal(artifacts.load_test_arrays(tmp_path / "arrays")[1], y_test[::-1])


def test_saved_probabilities_are_reused_only_for_the_model_that_made_them(tmp_path, capsys,
                                                                         small_model):
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    model, retrained = small_model(seed=0), small_model(seed=1)
    proba = model.predict(x, verbose=0)
    evaluation.save_probabilities("third", proba, tmp_path)
    saved = artifacts.load_array(evaluation.proba_path("third", tmp_path)).astype(np.float32)
    reused = evaluation.saved_or_predicted("third", model, x, tmp_path)
    assert "Reusing" in capsys.readouterr().out
    assert reused.dtype == np.float32 and np.array_equal(reused, saved)
    # Another model (trained again since): predicted afresh, not shown with the saved ones.
    fresh = evaluation.saved_or_predicted("third", retrained, x, tmp_path)
    assert "Reusing" not in capsys.readouterr().out
    assert np.allclose(fresh, retrained.predict(x, verbose=0), atol=1e-5)
