"""Temperature scaling fitted on the validation split, ECE and reliability
diagrams before and after. Probabilities are made here with a known miscalibration."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from cifar100cnn import calibration, evaluation, visualization  # noqa: E402


def softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def overconfident(n, sharpen, seed, classes=20):
    """Labels drawn from softmax(z) and a model that reports softmax(sharpen * z): its
    best temperature is ``sharpen``."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, classes))
    truth = softmax(logits)
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return labels, softmax(sharpen * logits).astype(np.float32)


def test_temperature_one_changes_nothing_and_the_argmax_never_changes():
    _, proba = overconfident(200, 2.0, seed=0)
    np.testing.assert_allclose(calibration.scale(proba, 1.0), proba, atol=1e-6)
    for temperature in (0.5, 3.0):
        assert np.array_equal(calibration.scale(proba, temperature).argmax(1), proba.argmax(1))


def test_temperature_divides_the_log_probabilities():
    proba = np.array([[0.7, 0.2, 0.1]])
    expected = softmax(np.log(proba) / 2.0)
    np.testing.assert_allclose(calibration.scale(proba, 2.0), expected, rtol=1e-9)
    assert calibration.scale(proba, 2.0)[0, 0] < 0.7  # softer


def test_negative_log_likelihood_hand_computed():
    proba = np.array([[0.5, 0.5], [0.25, 0.75]])
    assert calibration.negative_log_likelihood(np.array([0, 1]), proba) == pytest.approx(
        -(np.log(0.5) + np.log(0.75)) / 2)


@pytest.mark.parametrize("objective", ["ece", "nll"])
@pytest.mark.parametrize("sharpen", [0.5, 2.5])
def test_the_fitted_temperature_undoes_a_known_miscalibration(sharpen, objective):
    labels, proba = overconfident(20_000, sharpen, seed=1)
    assert calibration.fit_temperature(labels, proba, objective) == pytest.approx(sharpen, rel=0.05)


def smoothed(n, seed, classes=20, smoothing=0.3):
    """Labels drawn from a mixture of softmax(z) and the uniform distribution, and a model
    that reports softmax(z): too sure of its easy images, as label smoothing's opposite;
    no temperature fits every confidence level, so the two objectives disagree."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, classes))
    truth = (1 - smoothing) * softmax(logits) + smoothing / classes
    labels = np.array([rng.choice(classes, p=row) for row in truth])
    return labels, softmax(logits).astype(np.float32)


def test_the_ece_objective_gives_a_lower_ece_on_other_images_than_the_nll():
    y_val, p_val = smoothed(10_000, seed=7)
    y_test, p_test = smoothed(10_000, seed=8)
    by_ece = calibration.fit_temperature(y_val, p_val, "ece")
    by_nll = calibration.fit_temperature(y_val, p_val, "nll")
    ece = {t: evaluation.expected_calibration_error(y_test, calibration.scale(p_test, t)) for t in (by_ece, by_nll)}
    assert ece[by_ece] < ece[by_nll] - 0.01
    assert calibration.fit_temperature(y_val, p_val) == by_ece  # the default


def test_an_unknown_objective_is_refused():
    with pytest.raises(ValueError, match="objective"):
        calibration.fit_temperature(np.array([0]), np.array([[1.0, 0.0]]), "brier")


def test_temperature_comes_from_validation_only_and_lowers_test_ece():
    y_val, p_val = overconfident(8_000, 2.0, seed=2)
    y_test, p_test = overconfident(8_000, 2.0, seed=3)
    result = calibration.calibrate("m", y_val, p_val, y_test, p_test)
    assert result.temperature == calibration.fit_temperature(y_val, p_val)
    # Other test probabilities, same validation: the same temperature.
    other = calibration.calibrate("m", y_val, p_val, y_test, softmax(np.log(p_test) * 0.3))
    assert other.temperature == result.temperature
    assert result.ece_before == pytest.approx(evaluation.expected_calibration_error(y_test, p_test))
    assert result.ece_after < 0.5 * result.ece_before
    assert result.nll_after < result.nll_before
    assert result.bins_after[2].sum() == len(y_test)


def test_table_csv_and_figure(tmp_path):
    y_val, p_val = overconfident(2_000, 2.0, seed=4)
    results = [calibration.calibrate(name, y_val, p_val, y_val, p_val) for name in ("a", "b")]
    text = calibration.format_calibration(results)
    assert "ECE before" in text and f"{results[0].temperature:.3f}" in text
    calibration.save_calibration(results, tmp_path / "calibration.csv")
    lines = (tmp_path / "calibration.csv").read_text().splitlines()
    assert lines[0] == "model,temperature,ece_before,ece_after,nll_before,nll_after" and len(lines) == 3
    fig = visualization.plot_calibration(results, tmp_path / "calibration.png")
    assert (tmp_path / "calibration.png").stat().st_size > 10_000
    top, bottom = fig.axes[0], fig.axes[len(results)]  # model "a": before, after
    for ax, (_, accuracy, counts), title in ((top, results[0].bins_before, "a: before"),
                                             (bottom, results[0].bins_after, "a: T = ")):
        assert ax.get_title().startswith(title)
        heights = [bar.get_height() for bar in ax.patches]
        np.testing.assert_allclose(heights, accuracy[counts > 0])
    matplotlib.pyplot.close("all")


def test_validation_split_is_the_models_own_split():
    x_val, y_val = calibration.validation_split("synthetic", quick=True, seed=0)
    assert x_val.shape == (400, 32, 32, 3) and x_val.dtype == np.uint8 and y_val.shape == (400,)


def test_validation_split_without_the_dataset_is_a_note_not_an_error(tmp_path, capsys):
    assert calibration.validation_split("cifar100", archive=str(tmp_path / "missing.tar.gz")) is None
    assert "no temperature scaling" in capsys.readouterr().out


def test_every_model_is_calibrated_on_its_own_validation_predictions():
    import keras

    from cifar100cnn.inference import predict_in_batches

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    models = {name: keras.Model(inputs, keras.layers.Dense(100, activation="softmax")(hidden))
              for name in ("a", "b")}
    rng = np.random.default_rng(0)
    x_val, y_val = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, 60)
    x_test, y_test = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), rng.integers(0, 100, 40)
    probabilities = {name: predict_in_batches(model, x_test) for name, model in models.items()}
    results = calibration.calibrate_models(models, x_val, y_val, y_test, probabilities, batch_size=16)
    assert [r.model for r in results] == ["a", "b"]
    for result, (name, model) in zip(results, models.items()):
        expected = calibration.fit_temperature(y_val, predict_in_batches(model, x_val))
        assert result.temperature == pytest.approx(expected, rel=1e-4)
        assert result.ece_before == pytest.approx(
            evaluation.expected_calibration_error(y_test, probabilities[name]))


def test_a_temperature_at_the_search_bound_is_pointed_out():
    rng = np.random.default_rng(0)  # always confidently wrong: the flatter, the better
    labels = rng.integers(0, 10, 500)
    wrong = np.full((500, 10), 0.1 / 9)
    wrong[np.arange(500), (labels + 1) % 10] = 0.9
    result = calibration.calibrate("wrong", labels, wrong, labels, wrong)
    assert result.temperature == pytest.approx(np.exp(calibration.LOG_T_BOUNDS[1]), rel=0.01)
    assert "edge of the search range" in calibration.format_calibration([result])
    y, proba = overconfident(2_000, 2.0, seed=5)
    fine = calibration.calibrate("fine", y, proba, y, proba)
    assert "edge" not in calibration.format_calibration([fine])
