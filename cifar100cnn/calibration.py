"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One number T per model divides its logits: T > 1 softens overconfident predictions, T < 1
sharpens underconfident ones; the predicted class never changes. T is fitted on the
validation split, never on the test set, by minimising its ECE (or, on request, its negative
log-likelihood). The
saved models output probabilities, so their logits are recovered as ``log(probabilities)``
(softmax is unchanged by the constant this leaves out). ECE and the reliability bins are
``evaluation``'s.
"""

import os
from dataclasses import dataclass

import numpy as np

from . import evaluation

LOG_T_BOUNDS = (-3.0, 3.0)  # T from about 0.05 to 20
ECE_GRID_STEP = 0.05  # in log T: 5 % apart; then 201 points within one step of the best, 100 times finer
_TINY = 1e-12


def scale(proba, temperature):
    """The probabilities after dividing the logits ``log(proba)`` by ``temperature``."""
    logits = np.log(np.clip(np.asarray(proba, np.float64), _TINY, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true, proba):
    """Mean ``-log p(true class)``."""
    picked = np.asarray(proba, np.float64)[np.arange(len(y_true)), y_true]
    return float(-np.mean(np.log(np.clip(picked, _TINY, None))))


def fit_temperature(y_val, proba_val, objective="ece", n_bins=15):
    """The temperature that best calibrates the validation probabilities.

    Args:
        y_val: validation labels (int).
        proba_val: the model's validation probabilities, shape (N, classes).
        objective: "ece" (default) minimises the validation ECE with ``n_bins`` bins, the
            figure TestModels reports (a grid over log T, then a finer grid around its best
            point); "nll" minimises the negative log-likelihood (Guo et al.; a bounded search).
            A model trained with label smoothing is under-confident on its hard images and
            over-confident on its easy ones, which one T cannot both fix: the NLL's optimum
            then leaves a larger ECE than the ECE's own optimum, on held-out images too
            (docs/calibration.md).
        n_bins: confidence bins of the ECE objective.

    Returns:
        The temperature, a float > 0.
    """
    if objective == "nll":
        return _fit_temperature_nll(y_val, proba_val)
    if objective != "ece":
        raise ValueError(f"unknown objective {objective!r}; expected 'ece' or 'nll'")
    logits = np.log(np.clip(np.asarray(proba_val, np.float64), _TINY, None))
    logits -= logits.max(axis=1, keepdims=True)  # the top class at 0: its probability is 1 / sum
    correct = np.asarray(proba_val).argmax(axis=1) == np.asarray(y_val)  # T never changes it

    def ece(log_t):
        confidence = 1.0 / np.exp(logits / np.exp(log_t)).sum(axis=1)
        return evaluation.binned_calibration_error(*evaluation.confidence_bins(confidence, correct, n_bins))

    low, high = LOG_T_BOUNDS
    coarse = np.linspace(low, high, int(round((high - low) / ECE_GRID_STEP)) + 1)
    best = coarse[np.argmin([ece(log_t) for log_t in coarse])]
    fine = np.linspace(max(low, best - ECE_GRID_STEP), min(high, best + ECE_GRID_STEP), 201)
    return float(np.exp(fine[np.argmin([ece(log_t) for log_t in fine])]))


def _fit_temperature_nll(y_val, proba_val):
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: negative_log_likelihood(y_val, scale(proba_val, np.exp(log_t))),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def validation_split(data_source="cifar100", archive=None, verify_archive=True, quick=False, seed=0):
    """The validation images and labels of the models' own split (the last 10,000 training
    images for CIFAR-100), to fit temperatures on.

    Returns:
        ``(x_val, y_val)``, or None, with a note, when the dataset cannot be read here.
    """
    from . import data

    try:
        dataset = data.load_dataset(data_source, archive=archive, verify=verify_archive,
                                    quick=quick, seed=seed)
    except data.DatasetError as error:
        print(f"No validation split, so no temperature scaling: {error}")
        return None
    print(f"Validation split: {len(dataset.x_val):,} images of {dataset.source}")
    return dataset.x_val, dataset.y_val


@dataclass
class Calibration:
    """One model's test calibration before and after temperature scaling."""

    model: str
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins_before: tuple
    bins_after: tuple


def calibrate(name, y_val, proba_val, y_test, proba_test, n_bins=15):
    """Fit T on the validation probabilities and measure ECE and NLL on the test set.

    Args:
        name: the model's name.
        y_val, proba_val: validation labels and probabilities (used to fit T only).
        y_test, proba_test: test labels and probabilities (used to measure only).
        n_bins: confidence bins of the ECE and the reliability diagram.

    Returns:
        A ``Calibration``.
    """
    temperature = fit_temperature(y_val, proba_val)
    scaled = scale(proba_test, temperature)
    return Calibration(
        name, temperature,
        evaluation.expected_calibration_error(y_test, proba_test, n_bins),
        evaluation.expected_calibration_error(y_test, scaled, n_bins),
        negative_log_likelihood(y_test, proba_test), negative_log_likelihood(y_test, scaled),
        evaluation.reliability_bins(y_test, proba_test, n_bins),
        evaluation.reliability_bins(y_test, scaled, n_bins))


def calibrate_models(models, x_val, y_val, y_test, probabilities, batch_size=500):
    """``calibrate`` for every model: each predicts the validation images (float32: the
    temperature depends on every probability), its test probabilities come from
    ``probabilities`` (by name).

    Returns:
        A list of ``Calibration``, in the order of ``models``.
    """
    from .inference import predict_in_batches

    return [calibrate(name, y_val, predict_in_batches(model, x_val, batch_size, f"validation {name}"),
                      y_test, probabilities[name]) for name, model in models.items()]


def format_calibration(results):
    """A text table: temperature, test ECE and NLL before and after, per model."""
    lines = [f"{'model':>16}{'T':>7}{'ECE before':>12}{'ECE after':>11}{'NLL before':>12}{'NLL after':>11}"]
    lines += [f"{r.model:>16}{r.temperature:>7.3f}{r.ece_before:>12.4f}{r.ece_after:>11.4f}"
              f"{r.nll_before:>12.4f}{r.nll_after:>11.4f}" for r in results]
    low, high = np.exp(LOG_T_BOUNDS)
    edge = [r.model for r in results if not 1.01 * low < r.temperature < high / 1.01]
    if edge:
        lines.append(f"T at the edge of the search range ({low:.2f} to {high:.1f}) for {', '.join(edge)}: "
                     "predictions close to uniform (or to one-hot); scaling cannot help much.")
    return "\n".join(lines)


def save_calibration(results, path):
    """The table of ``format_calibration`` as CSV (atomically)."""
    columns = ("model", "temperature", "ece_before", "ece_after", "nll_before", "nll_after")
    rows = [{column: getattr(r, column) for column in columns} for r in results]
    return evaluation.save_results(rows, path, columns=columns)


# ---------------------------------------------------------------------------
# The temperature folded into the model
# ---------------------------------------------------------------------------

class FoldError(ValueError):
    """The model does not end in a softmax over a linear layer; nothing was changed."""


def _ends_in_softmax(layer):
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def _is_linear_scale(layer):
    """Layers between the logits and the softmax that commute with dividing by T."""
    kind = type(layer).__name__
    if kind == "Rescaling":
        return not np.any(np.asarray(layer.offset, np.float64))
    if kind == "Activation":
        return getattr(layer.activation, "__name__", None) == "linear"
    return kind in ("Dropout", "Identity")


def logits_layer(model):
    """The Dense layer whose outputs, up to a constant factor, are the logits of ``model``'s
    softmax: the output layer itself (a Dense with a softmax, as in the baseline, overfit,
    third_original and VGG16 heads) or, behind a final softmax Activation, the last Dense
    before it across scale-only layers (the tuned third model's ``logits`` and
    ``logit_scale``). A nested sub-model at the end (VGG16's head) is searched the same way.

    Raises:
        FoldError: no such layer (something non-linear sits between the Dense and the softmax).
    """
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if layers and hasattr(layers[-1], "layers"):
        return logits_layer(layers[-1])
    if layers and type(layers[-1]).__name__ == "Dense" and _ends_in_softmax(layers[-1]):
        return layers[-1]
    if not layers or type(layers[-1]).__name__ != "Activation" or not _ends_in_softmax(layers[-1]):
        raise FoldError(f"{model.name} does not end in a softmax; no temperature can be folded in")
    for layer in reversed(layers[:-1]):
        if type(layer).__name__ == "Dense" and getattr(layer.activation, "__name__", None) == "linear":
            return layer
        if not _is_linear_scale(layer):
            raise FoldError(f"{model.name}: {layer.name} ({type(layer).__name__}) sits between its "
                            "logits and its softmax; a temperature cannot be folded in")
    raise FoldError(f"{model.name} has no Dense layer before its softmax")


def fold_temperature(model, temperature):
    """A copy of ``model`` whose output is already temperature-scaled: its logits layer's
    kernel and bias divided by ``temperature``, so that ``copy.predict(x)`` equals
    ``scale(model.predict(x), temperature)``. The copy has the same layers and config (a
    plain Keras model that loads in safe mode without this package); ``model`` is unchanged.

    Args:
        model: a Keras model ending in a softmax (``logits_layer``).
        temperature: T > 0 (``fit_temperature``).

    Returns:
        The new model.
    """
    import keras

    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"the temperature must be a positive number, got {temperature!r}")
    logits_layer(model)  # refuse before copying
    copy = keras.models.clone_model(model, recursive=True)
    copy.set_weights(model.get_weights())
    layer = logits_layer(copy)
    layer.set_weights([np.asarray(w, np.float32) / np.float32(temperature) for w in layer.get_weights()])
    return copy


def calibrate_saved_model(path, x_val, y_val, out_path=None, batch_size=500, tolerance=1e-3):
    """Fit the temperature of the model saved at ``path`` on the validation images and save
    the model with it folded in (``fold_temperature``), through ``artifacts.save_model``.

    The temperature is fitted on the model's own outputs, so a model already calibrated this
    way gets T close to 1: it is then left as it is (applying this twice changes nothing).

    Args:
        path: the ``.keras`` file.
        x_val, y_val: validation images and labels (never the test set).
        out_path: where to save the calibrated model (default: ``path``, replaced atomically).
        batch_size: images per prediction batch.
        tolerance: |T - 1| below which the model counts as calibrated already.

    Returns:
        The fitted temperature.
    """
    from . import artifacts
    from .inference import predict_in_batches

    model = artifacts.load_model(path)
    temperature = fit_temperature(y_val, predict_in_batches(model, x_val, batch_size,
                                                            f"validation {model.name}"))
    if abs(temperature - 1) < tolerance:
        print(f"{path}: calibrated already (T = {temperature:.4f}); left as it is.")
        if out_path and os.fspath(out_path) != os.fspath(path):
            artifacts.save_model(model, out_path)
        return temperature
    artifacts.save_model(fold_temperature(model, temperature), out_path or path)
    print(f"{out_path or path}: temperature {temperature:.4f} folded into the model's output.")
    return temperature


def main(argv=None):
    """``python -m cifar100cnn.calibration MODEL.keras...``: fold each model's temperature,
    fitted on the CIFAR-100 validation split ($CIFAR100_ARCHIVE, $CIFAR100_VERIFY)."""
    import argparse

    from . import environment

    parser = argparse.ArgumentParser(prog="python -m cifar100cnn.calibration",
                                     description="Fold a validation-fitted temperature into saved models.")
    parser.add_argument("models", nargs="+", metavar="MODEL", help=".keras files, each replaced atomically")
    parser.add_argument("--data", choices=("cifar100", "synthetic"), default="cifar100",
                        help="the dataset whose validation split fits T (default cifar100)")
    parser.add_argument("--batch-size", type=int, default=500, help="images per prediction batch")
    args = parser.parse_args(argv)
    archive, verify = environment.archive_settings()
    validation = validation_split(args.data, archive, verify)
    if validation is None:
        return 1
    for path in args.models:
        calibrate_saved_model(path, *validation, batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
