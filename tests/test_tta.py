"""Test-time augmentation (horizontal flip, optional shifts) as an
evaluation option; results.csv keeps the single-view columns and adds tta_* columns."""

import csv

import keras
import numpy as np
import pytest
from keras import layers

from cifar100cnn import data, evaluation


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)


def test_views_are_the_images_their_mirror_and_four_shifts(images):
    flip_only = evaluation.tta_views(images)
    assert len(flip_only) == 2 and np.array_equal(flip_only[0], images)
    assert np.array_equal(flip_only[1], images[:, :, ::-1])
    views = evaluation.tta_views(images, translate=3)
    assert len(views) == 6 and all(v.shape == images.shape for v in views)
    up, down, left, right = views[2:]
    assert np.array_equal(up[:, 3:], images[:, :-3])        # content moved down by 3
    assert np.array_equal(down[:, :-3], images[:, 3:])
    assert np.array_equal(left[:, :, 3:], images[:, :, :-3])
    assert np.array_equal(right[:, :, :-3], images[:, :, 3:])
    assert np.array_equal(up[:, :3], np.repeat(images[:, :1], 3, axis=1))  # edge repeated


class LeftRight:
    """A stand-in model: class 0 with the left half's share of the brightness, class 1 the rest."""

    name = "left_right"

    def __call__(self, x, training=False):
        x = np.asarray(x, np.float64)
        left, total = x[:, :, :16].sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3))
        share = left / total
        proba = np.zeros((len(x), 100), np.float32)
        proba[:, 0], proba[:, 1] = share, 1 - share
        return proba


def test_tta_averages_the_predictions_over_the_views(images):
    model = LeftRight()
    single = model(images)
    flipped = model(images[:, :, ::-1])
    np.testing.assert_allclose(evaluation.predict_tta(model, images, batch_size=5),
                               (single + flipped) / 2, rtol=1e-6)
    shifted = evaluation.predict_tta(model, images, batch_size=5, translate=2)
    expected = sum(model(v) for v in evaluation.tta_views(images, 2)) / 6
    np.testing.assert_allclose(shifted, expected, rtol=1e-6)


def tiny_model():
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(100, activation="softmax")(x), name="tiny")


def test_results_csv_keeps_the_single_view_columns_and_adds_tta_ones(tmp_path, images):
    keras.utils.set_random_seed(0)
    models = {"baseline": tiny_model()}
    y = np.arange(len(images)) % 100
    _, plain = evaluation.evaluate_all(models, images, y, data.FINE_TO_COARSE, tmp_path, 5)
    probabilities, rows = evaluation.evaluate_all(models, images, y, data.FINE_TO_COARSE, tmp_path, 5,
                                                  tta=True)
    for key in ("top1", "top5", "superclass_acc", "macro_f1", "ece"):
        assert rows[0][key] == plain[0][key]  # single view, TTA or not
    proba_tta = evaluation.predict_tta(models["baseline"], images, 5)
    assert rows[0]["tta_top1"] == evaluation.top_k_accuracy(y, proba_tta, 1)
    assert rows[0]["tta_top5"] == evaluation.top_k_accuracy(y, proba_tta, 5)
    assert "tta_top1" not in plain[0]
    evaluation.save_results(rows + plain, tmp_path / "results.csv")
    with open(tmp_path / "results.csv") as handle:
        saved = list(csv.DictReader(handle))
    assert list(saved[0])[:10] == list(evaluation.RESULT_COLUMNS[:10])
    assert float(saved[0]["tta_top1"]) == pytest.approx(rows[0]["tta_top1"])
    assert saved[1]["tta_top1"] == ""  # single-view run: the column stays empty
    assert "tta_top1" in evaluation.format_table(rows)
    assert "tta_top1" not in evaluation.format_table(plain)


def test_tta_scores_hand_computed():
    proba = np.zeros((2, 100), np.float32)
    proba[:, :3] = [0.5, 0.3, 0.2]  # class 2 ranks third
    assert evaluation.tta_scores(np.array([0, 2]), proba) == {"tta_top1": 0.5, "tta_top5": 1.0}
