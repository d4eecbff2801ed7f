"""The evaluation functions predict in inference mode: a model whose training-mode output is
noise (GaussianNoise) and whose batch statistics would move (BatchNormalization) scores
perfectly and keeps its weights only when every call runs with ``training=False``."""

import keras
import numpy as np
import pytest
from keras import layers

from cifar100cnn import calibration, data, evaluation, inference, robustness

SHARPNESS = 4000.0  # logit gap per unit of squared distance: confident but not saturated


def colour_reader():
    """Class k for images of red level 2k (0-198); softmax of -SHARPNESS * (r - c_k)^2,
    written as a linear layer (the r^2 term is the same for every class)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.BatchNormalization(epsilon=1e-9)(x)  # identity with its starting statistics
    x = layers.GaussianNoise(0.2)(x)                # identity in inference only
    outputs = layers.Dense(100, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="colour_reader")
    centres = 2 * np.arange(100) / 255
    kernel = np.zeros((3, 100), np.float32)
    kernel[0] = 2 * SHARPNESS * centres
    model.layers[-1].set_weights([kernel, (-SHARPNESS * centres ** 2).astype(np.float32)])
    return model


def call(model, x, training=False):
    """The model called directly, as NumPy (torch tensors that need grad included)."""
    return keras.ops.convert_to_numpy(model(x, training=training))


def coloured(labels):
    images = np.zeros((len(labels), 32, 32, 3), np.uint8)
    images[..., 0] = (2 * np.asarray(labels))[:, None, None]
    return images


@pytest.fixture
def setup():
    model = colour_reader()
    labels = np.arange(120) % 100
    return model, coloured(labels), labels, [w.copy() for w in model.get_weights()]


def unchanged(model, weights):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))


def test_the_model_really_differs_in_training_mode(setup):
    model, x, y, _ = setup
    assert np.mean(call(model, x).argmax(1) == y) == 1.0
    assert np.mean(call(model, x, training=True).argmax(1) == y) < 0.5


def test_predict_in_batches(setup):
    model, x, y, weights = setup
    proba = inference.predict_in_batches(model, x, batch_size=32)
    np.testing.assert_allclose(proba, call(model, x), atol=1e-6)
    assert unchanged(model, weights)


def test_evaluate_all_and_tta(setup, tmp_path):
    model, x, y, weights = setup
    probabilities, rows = evaluation.evaluate_all({"reader": model}, x, y, data.FINE_TO_COARSE,
                                                  str(tmp_path), batch_size=32, tta=True)
    assert rows[0]["top1"] == 1.0 and rows[0]["tta_top1"] == 1.0
    np.testing.assert_allclose(probabilities["reader"], call(model, x), atol=1e-6)
    tta = evaluation.predict_tta(model, x, batch_size=32, translate=2)
    np.testing.assert_allclose(tta, call(model, x), atol=1e-6)  # constant images
    assert unchanged(model, weights)


def test_calibration(setup):
    model, x, y, weights = setup
    proba = call(model, x)
    result, = calibration.calibrate_models({"reader": model}, x, y, y, {"reader": proba}, batch_size=32)
    assert result.temperature == pytest.approx(calibration.fit_temperature(y, proba), rel=1e-6)
    assert unchanged(model, weights)


def test_calibrate_saved_model_fits_on_inference_outputs(setup, tmp_path):
    from cifar100cnn import artifacts

    model, x, y, _ = setup
    path = str(tmp_path / "reader.keras")
    artifacts.save_model(model, path)
    expected = calibration.fit_temperature(y, call(model, x))
    assert calibration.calibrate_saved_model(path, x, y) == pytest.approx(expected, rel=1e-6)


def test_robustness(setup):
    model, x, y, weights = setup
    sets = {("copy", s): (x, y) for s in robustness.SEVERITIES}  # "corruptions" that change nothing
    result = robustness.evaluate_robustness(model, x, y, sets, batch_size=32)
    assert result.clean == 1.0 and np.all(result.accuracy == 1.0)
    assert unchanged(model, weights)


def test_saved_probabilities_or_a_fresh_prediction(setup, tmp_path):
    model, x, y, weights = setup
    proba = evaluation.saved_or_predicted("reader", model, x, str(tmp_path))
    assert np.mean(proba.argmax(1) == y) == 1.0
    assert unchanged(model, weights)
