"""The validation-fitted temperature folded into a model: its own output is calibrated."""

import json
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

from cifar100cnn import artifacts, calibration, evaluation, models

IMAGES = np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)


def nested_head_model():
    """A model ending in a nested sub-model with the softmax Dense, like VGG16's head."""
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    head_in = keras.Input((3,))
    head = keras.Model(head_in, models.classifier(keras.layers.Dense(8, activation="relu")(head_in)),
                       name="head")
    return keras.Model(inputs, head(features), name="nested")


ARCHITECTURES = {
    "baseline": models.build_baseline,
    "overfit": models.build_overfit,
    "third_original": models.build_third_original,
    "third_tuned": lambda: models.build_third_tuned(widths=(8, 16, 32)),
    "nested_head": nested_head_model,
}


def layer_kinds(model):
    return [(type(layer).__name__, "" if type(layer).__name__ == "InputLayer" else layer.name)
            for layer in model.layers]


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("temperature", [0.63, 1.7])
def test_folded_output_is_the_temperature_scaled_softmax(name, temperature):
    keras.utils.set_random_seed(1)
    model = ARCHITECTURES[name]()
    layer = calibration.logits_layer(model)
    if layer.use_bias:  # Keras starts biases at zero: give them values the fold must scale too
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel, np.random.default_rng(2).normal(size=bias.shape).astype(np.float32)])
    before = np.asarray(model.predict_on_batch(IMAGES), np.float64)
    folded = calibration.fold_temperature(model, temperature)
    after = np.asarray(folded.predict_on_batch(IMAGES), np.float64)
    np.testing.assert_allclose(after, calibration.scale(before, temperature), atol=1e-5, rtol=0)
    assert not np.allclose(after, before, atol=1e-4)  # the fold did something
    # The original is untouched and the copy has the same layers.
    np.testing.assert_array_equal(np.asarray(model.predict_on_batch(IMAGES), np.float64), before)
    assert layer_kinds(folded) == layer_kinds(model)


def test_the_tuned_models_temperature_goes_into_its_logits_not_its_other_layers():
    keras.utils.set_random_seed(0)
    model = models.build_third_tuned(widths=(8, 16, 32))
    folded = calibration.fold_temperature(model, 0.5)
    assert calibration.logits_layer(model).name == "logits"
    for old, new in zip(model.layers, folded.layers):
        for a, b in zip(old.get_weights(), new.get_weights()):
            np.testing.assert_allclose(b, a / 0.5 if old.name == "logits" else a, rtol=1e-6)
    assert folded.get_layer("logit_scale").get_config() == model.get_layer("logit_scale").get_config()


def test_a_model_without_a_linear_path_to_its_softmax_is_refused():
    inputs = keras.Input((4,))
    x = keras.layers.Dense(100)(inputs)
    x = keras.layers.ReLU()(x)  # non-linear between the logits and the softmax
    bad = keras.Model(inputs, keras.layers.Activation("softmax")(x))
    with pytest.raises(calibration.FoldError, match="re_lu"):
        calibration.fold_temperature(bad, 2.0)
    no_softmax = keras.Model(inputs, keras.layers.Dense(100)(inputs))
    with pytest.raises(calibration.FoldError, match="softmax"):
        calibration.fold_temperature(no_softmax, 2.0)
    with pytest.raises(ValueError, match="positive"):
        calibration.fold_temperature(models.build_baseline(), 0.0)


def miscalibrated(n, seed, sharpen=4.0):
    """Images and labels drawn from a known model's softmax(z); the returned model outputs
    softmax(sharpen * z): deliberately overconfident."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255, offset=-0.5)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(100, activation="softmax")(x), name="sharp")
    rng = np.random.default_rng(0)
    kernel = rng.normal(scale=sharpen * 2, size=(3, 100)).astype(np.float32)
    model.layers[-1].set_weights([kernel, np.zeros(100, np.float32)])
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, (n, 1, 1, 3))
    images = np.broadcast_to(colours, (n, 32, 32, 3)).astype(np.uint8)
    true = calibration.scale(np.asarray(model.predict_on_batch(images)), sharpen)
    labels = np.array([rng.choice(100, p=row / row.sum()) for row in true])
    return model, images, labels


def test_folding_the_fitted_temperature_lowers_the_ece_of_an_overconfident_model(tmp_path):
    model, x_val, y_val = miscalibrated(1500, seed=1)
    _, x_test, y_test = miscalibrated(1500, seed=2)
    path = str(tmp_path / "sharp.keras")
    artifacts.save_model(model, path)
    ece_before = evaluation.expected_calibration_error(y_test, np.asarray(model.predict_on_batch(x_test)))
    temperature = calibration.calibrate_saved_model(path, x_val, y_val)
    assert temperature == pytest.approx(4.0, rel=0.15)
    calibrated = artifacts.load_model(path)
    proba = np.asarray(calibrated.predict_on_batch(x_test))
    ece_after = evaluation.expected_calibration_error(y_test, proba)
    assert ece_before > 0.1 and ece_after < ece_before / 2
    # Fitted again on its own output, the calibrated model needs no more: left as it is.
    again = calibration.calibrate_saved_model(path, x_val, y_val)
    assert again == pytest.approx(1.0, abs=1e-3)


def test_the_calibrated_file_is_plain_keras_in_safe_mode_without_this_package(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build_third_tuned(widths=(8, 16, 32))
    path = tmp_path / "third.keras"
    artifacts.save_model(calibration.fold_temperature(model, 0.63), str(path))
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    modules = {layer.get("module") for layer in config["config"]["layers"]}
    assert modules <= {"keras.layers", "keras"}, modules
    expected = calibration.scale(np.asarray(model.predict_on_batch(IMAGES[:4])), 0.63)
    np.save(tmp_path / "images.npy", IMAGES[:4])
    source = ("import sys, numpy as np, keras; m = keras.models.load_model(sys.argv[1], safe_mode=True); "
              "assert not any(n.startswith('cifar100cnn') for n in sys.modules); "
              "print(repr(np.asarray(m.predict_on_batch(np.load(sys.argv[2]))).tolist()))")
    result = subprocess.run([sys.executable, "-c", source, str(path), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(np.array(eval(result.stdout.strip().splitlines()[-1])), expected, atol=1e-5)


def test_the_command_folds_each_models_temperature(tmp_path, monkeypatch):
    model, x_val, y_val = miscalibrated(1000, seed=1)
    paths = [str(tmp_path / f"m{i}.keras") for i in range(2)]
    for path in paths:
        artifacts.save_model(model, path)
    monkeypatch.setattr(calibration, "validation_split", lambda *args, **kwargs: (x_val, y_val))
    assert calibration.main(paths) == 0
    expected = calibration.scale(np.asarray(model.predict_on_batch(x_val[:8])),  # T found to 1e-4
                                 calibration.fit_temperature(y_val, np.asarray(model.predict_on_batch(x_val))))
    for path in paths:
        np.testing.assert_allclose(artifacts.load_model(path).predict_on_batch(x_val[:8]), expected, atol=2e-3)
    monkeypatch.setattr(calibration, "validation_split", lambda *args, **kwargs: None)
    assert calibration.main(paths) == 1  # no dataset: nothing changed, a failing status
