"""Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One number T per model divides its logits: T > 1 softens overconfident predictions, T < 1
sharpens underconfident ones; the predicted class never changes. T is fitted on the
validation split by minimising the negative log-likelihood, never on the test set. The
saved models output probabilities, so their logits are recovered as ``log(probabilities)``
(softmax is unchanged by the constant this leaves out). ECE and the reliability bins are
``evaluation``'s.
"""

from dataclasses import dataclass

import numpy as np

from . import evaluation

LOG_T_BOUNDS = (-3.0, 3.0)  # T from about 0.05 to 20
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


def fit_temperature(y_val, proba_val):
    """The temperature that minimises the validation NLL (a bounded search over log T).

    Args:
        y_val: validation labels (int).
        proba_val: the model's validation probabilities, shape (N, classes).

    Returns:
        The temperature, a float > 0.
    """
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
