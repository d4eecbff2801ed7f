"""Evaluation of the saved models: predictions, accuracy tables, per-class scores,
confusion matrices, calibration. The maths is scikit-learn's wherever it has it."""

import csv
import os
import time

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support, top_k_accuracy_score)

from . import artifacts, data
from .inference import bfloat16_copy, close_calls, predict_in_batches, predict_raw, recheck_close_calls

# Test accuracies reported by the original project (its third model is reproduced as
# "third_original"; "third" is our tuned replacement for it, so both rows compare to it).
ORIGINAL_REPORTED = {"baseline": 0.2992, "overfit": 0.3444, "third": 0.2992,
                     "third_original": 0.2992, "vgg16": 0.3253}
RESULT_COLUMNS = ("model", "top1", "top5", "superclass_acc", "macro_f1", "ece", "params",
                  "images_per_s", "n_test", "original_reported_top1", "tta_top1", "tta_top5")


def load_models(models_dir="models", names=None):
    """The saved models that exist, by name; each missing one is reported and skipped."""
    loaded = {}
    for name in names or artifacts.MODEL_FILES:
        path = artifacts.model_path(name, models_dir)
        if not os.path.exists(path):
            print(f"Skipping {name}: {path} not found (run {artifacts.PRODUCED_BY[name]} to produce it).")
            continue
        loaded[name] = artifacts.load_model(path)
    return loaded


def predict_timed(model, x, batch_size=500):
    """Softmax probabilities (float32) and the throughput in images per second."""
    predict_in_batches(model, x[:min(len(x), batch_size)], batch_size, "warm-up")  # one-off set-up
    start = time.perf_counter()
    proba = predict_in_batches(model, x, batch_size, description=f"predict {model.name}")
    return proba, len(x) / (time.perf_counter() - start)


def tta_views(x, translate=0):
    """The views that test-time augmentation averages over.

    Args:
        x: images, shape (N, H, W, 3).
        translate: pixels; > 0 adds four copies shifted up, down, left and right by that
            many pixels (the border pixels repeated into the gap). Default 0.

    Returns:
        A list of arrays shaped like ``x``: the images, their mirror images, then the shifts.
    """
    x = np.asarray(x)
    views = [x, np.ascontiguousarray(x[:, :, ::-1])]
    if translate:
        t, (height, width) = int(translate), x.shape[1:3]
        padded = np.pad(x, ((0, 0), (t, t), (t, t), (0, 0)), mode="edge")
        views += [padded[:, t + dy:t + dy + height, t + dx:t + dx + width]
                  for dy, dx in ((-t, 0), (t, 0), (0, -t), (0, t))]
    return views


def predict_tta(model, x, batch_size=500, translate=0, proba=None, precision="float32",
                labels=None):
    """Probabilities averaged over ``tta_views(x, translate)`` (horizontal flip, and shifts
    when ``translate`` > 0).

    Args:
        model: a Keras model.
        x: the images.
        batch_size: images per prediction batch.
        translate: pixels of the shifted views (0: flip only).
        proba: the model's float32 probabilities for ``x`` itself when already predicted
            (reused, not predicted again).
        precision: "float32" (default) or "bfloat16" for the extra views; with bfloat16,
            every image whose averaged top-1 or top-5 decision (of its true class when
            ``labels`` are given) the rounding could change gets its views predicted again
            in float32, so the decisions, and ``tta_scores``, are float32's.
        labels: the true classes of ``x`` (see ``precision``).
    """
    views = tta_views(x, translate)
    label = lambda i: f"TTA {model.name} {i + 1}/{len(views)}"
    first = proba if proba is not None else predict_in_batches(model, views[0], batch_size, label(0))
    if precision == "float32":
        return (first + sum(predict_in_batches(model, view, batch_size, label(i))
                            for i, view in enumerate(views) if i)) / len(views)
    fast = bfloat16_copy(model)
    extra = [predict_raw(fast, view, batch_size, label(i) + " (bf16)") for i, view in enumerate(views) if i]
    close = close_calls((first + sum(extra)) / len(views), labels)
    extra = [recheck_close_calls(model, view, p, close, batch_size, label(i + 1))
             for i, (view, p) in enumerate(zip(views[1:], extra))]
    return (first + sum(extra)) / len(views)


def tta_scores(y_true, proba_tta):
    """The ``tta_*`` columns of the results table from test-time-augmented probabilities."""
    return {"tta_top1": top_k_accuracy(y_true, proba_tta, 1),
            "tta_top5": top_k_accuracy(y_true, proba_tta, 5)}


def top_k_accuracy(y_true, proba, k):
    return float(top_k_accuracy_score(y_true, proba, k=k, labels=np.arange(proba.shape[1])))


def superclass_accuracy(y_true, proba, fine_to_coarse):
    """Accuracy after mapping true and predicted fine classes to their superclasses."""
    fine_to_coarse = np.asarray(fine_to_coarse)
    return float(accuracy_score(fine_to_coarse[y_true], fine_to_coarse[proba.argmax(axis=1)]))


def reliability_bins(y_true, proba, n_bins=15):
    """Per confidence bin (equal widths on [0, 1]): mean confidence, accuracy, count."""
    return confidence_bins(proba.max(axis=1), proba.argmax(axis=1) == y_true, n_bins)


def confidence_bins(confidence, correct, n_bins=15):
    """``reliability_bins`` from each prediction's confidence and whether it was right."""
    confidence = np.asarray(confidence, np.float64)
    correct = np.asarray(correct, np.float64)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    safe = np.maximum(counts, 1)
    mean_confidence = np.bincount(bins, confidence, n_bins) / safe
    accuracy = np.bincount(bins, correct, n_bins) / safe
    return mean_confidence, accuracy, counts


def binned_calibration_error(mean_confidence, accuracy, counts):
    """The count-weighted mean of |accuracy - confidence| over bins (``reliability_bins``)."""
    return float(np.sum(counts * np.abs(accuracy - mean_confidence)) / counts.sum())


def expected_calibration_error(y_true, proba, n_bins=15):
    """ECE: the count-weighted mean of |accuracy - confidence| over confidence bins."""
    return binned_calibration_error(*reliability_bins(y_true, proba, n_bins))


def evaluate(name, y_true, proba, fine_to_coarse, params=None, images_per_s=None):
    """One row of the results table."""
    y_pred = proba.argmax(axis=1)
    return {
        "model": name,
        "top1": float(accuracy_score(y_true, y_pred)),
        "top5": top_k_accuracy(y_true, proba, 5),
        "superclass_acc": superclass_accuracy(y_true, proba, fine_to_coarse),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=np.arange(proba.shape[1]),
                                   zero_division=0)),
        "ece": expected_calibration_error(y_true, proba),
        "params": params,
        "images_per_s": images_per_s,
        "n_test": len(y_true),
        "original_reported_top1": ORIGINAL_REPORTED.get(name),
    }


def format_table(rows, columns=None):
    """The rows as an aligned text table (numbers rounded for reading); by default the
    columns of ``RESULT_COLUMNS`` that hold a value in some row."""
    if columns is None:
        columns = [c for c in RESULT_COLUMNS if any(row.get(c) is not None for row in rows)]
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.0f}" if value >= 100 else f"{value:.4f}"
        return f"{value:,}" if isinstance(value, (int, np.integer)) else str(value)

    table = [list(columns)] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(text.rjust(w) for text, w in zip(line, widths)) for line in table)


def save_results(rows, path, columns=RESULT_COLUMNS):
    """Write the results table as CSV (atomically)."""
    with artifacts.atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows({c: _csv_value(row.get(c)) for c in columns} for row in rows)
    return path


def _csv_value(value):
    if value is None:
        return ""
    return round(float(value), 6) if isinstance(value, (float, np.floating)) else value


def proba_path(name, arrays_dir="arrays"):
    return os.path.join(arrays_dir, f"cifar100_{name}_proba.npy")


def save_probabilities(name, proba, arrays_dir="arrays"):
    """Keep the probabilities as float16 (100 per image) for later reuse."""
    return artifacts.save_array(np.asarray(proba, dtype=np.float16), proba_path(name, arrays_dir))


def per_class_scores(y_true, y_pred, names):
    """Rows of (class name, precision, recall, f1, support), in class order."""
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=np.arange(len(names)), zero_division=0)
    return [dict(name=n, precision=float(p), recall=float(r), f1=float(f), support=int(s))
            for n, p, r, f, s in zip(names, precision, recall, f1, support)]


def best_and_worst(scores, k=10, key="f1"):
    """The ``k`` best and ``k`` worst classes by ``key`` (ties broken by name)."""
    ranked = sorted(scores, key=lambda row: (-row[key], row["name"]))
    return ranked[:k], ranked[::-1][:k]


def format_scores(rows):
    lines = [f"{'class':<30}{'precision':>10}{'recall':>8}{'f1':>8}{'n':>6}"]
    lines += [f"{r['name']:<30}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}{r['support']:>6}"
              for r in rows]
    return "\n".join(lines)


def fine_confusion(y_true, y_pred, num_classes=data.NUM_CLASSES):
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def superclass_confusion(y_true, y_pred, fine_to_coarse):
    fine_to_coarse = np.asarray(fine_to_coarse)
    n = int(fine_to_coarse.max()) + 1
    return confusion_matrix(fine_to_coarse[y_true], fine_to_coarse[y_pred], labels=np.arange(n))


def superclass_order(fine_to_coarse):
    """Fine class ids sorted by superclass, so a confusion matrix shows superclass blocks."""
    return np.argsort(np.asarray(fine_to_coarse), kind="stable")


def most_confused_pairs(matrix, names, k=10):
    """The ``k`` largest off-diagonal cells: (true name, predicted name, count)."""
    off = np.array(matrix, copy=True)
    np.fill_diagonal(off, 0)
    flat = np.argsort(off, axis=None, kind="stable")[::-1][:k]
    rows, cols = np.unravel_index(flat, off.shape)
    return [(names[i], names[j], int(off[i, j])) for i, j in zip(rows, cols) if off[i, j] > 0]


def misclassified(y_true, proba, count=16, seed=0):
    """Indices of ``count`` wrong predictions, drawn at random (reproducibly)."""
    wrong = np.flatnonzero(proba.argmax(axis=1) != y_true)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(wrong, size=min(count, len(wrong)), replace=False))


def top_k_labels(proba_row, names, k=3):
    """``[(name, probability), ...]`` for the ``k`` most probable classes."""
    best = np.argsort(proba_row)[::-1][:k]
    return [(names[i], float(proba_row[i])) for i in best]


class NothingToEvaluate(RuntimeError):
    """The artifacts a notebook needs are missing; shown as one short message in notebooks."""

    def _render_traceback_(self):  # IPython shows this instead of a traceback
        return [f"Stopped: {self}"]


def ensure_test_arrays(output_dir=".", data_source="cifar100", archive=None, verify_archive=True,
                       quick=False, seed=0):
    """Write the test arrays from the dataset when TrainingModels has not run here.

    Lets a newcomer evaluate the committed models without training anything. Returns True
    when the arrays were written, False when they were already there (left untouched).
    """
    arrays_dir = os.path.join(output_dir, "arrays")
    paths = [os.path.join(arrays_dir, name) for name in (artifacts.X_TEST_FILE, artifacts.Y_TEST_FILE)]
    if all(os.path.exists(path) for path in paths):
        return False
    dataset = data.load_dataset(data_source, archive=archive, verify=verify_archive, quick=quick,
                                seed=seed)
    artifacts.save_test_arrays(dataset.x_test, dataset.y_test, arrays_dir)
    print(f"Wrote the {len(dataset.x_test):,} test images of {dataset.source} to {arrays_dir}")
    return True


def load_artifacts(output_dir=".", names=None, required=None):
    """Test arrays and the saved models under ``output_dir``; stop cleanly without them.

    ``required`` names a model without which the notebook cannot go on.
    """
    try:
        x_test, y_test = artifacts.load_test_arrays(os.path.join(output_dir, "arrays"))
    except artifacts.ArtifactError as error:
        raise NothingToEvaluate(str(error)) from None
    found = load_models(os.path.join(output_dir, "models"), names)
    if not found:
        raise NothingToEvaluate(f"no saved models under {os.path.join(output_dir, 'models')}. Run "
                                "TrainingModels.ipynb and ThirdModel.ipynb first (same output_dir).")
    if required and required not in found:
        raise NothingToEvaluate(f"the {required} model is missing; run "
                                f"{artifacts.PRODUCED_BY[required]} first.")
    print(f"Test set: {len(x_test):,} images; models: {', '.join(found)}")
    return x_test, y_test, found


def evaluate_all(models, x_test, y_test, fine_to_coarse, arrays_dir="arrays", batch_size=500,
                 tta=False, tta_translate=0, precision="float32"):
    """Predict once per model (in float32), save the probabilities, and return them with the
    table rows.

    Args:
        tta: also score test-time augmentation (``predict_tta``) in the ``tta_*`` columns;
            the other columns stay single-view. Default False.
        tta_translate: pixels of the shifted views of the TTA (0: flip only).
        precision: of the TTA's extra views (``predict_tta``; its scores stay float32's).
    """
    probabilities, rows = {}, []
    for name, model in models.items():
        proba, speed = predict_timed(model, x_test, batch_size)
        save_probabilities(name, proba, arrays_dir)
        probabilities[name] = proba
        rows.append(evaluate(name, y_test, proba, fine_to_coarse, model.count_params(), speed))
        if tta:
            rows[-1].update(tta_scores(y_test, predict_tta(model, x_test, batch_size, tta_translate, proba,
                                                           precision, y_test)))
    return probabilities, rows


def pick_examples(y_true, proba, n_right=4, n_wrong=4, seed=0):
    """Indices of some correctly and some wrongly predicted images (reproducible)."""
    rng = np.random.default_rng(seed)
    right = np.flatnonzero(proba.argmax(axis=1) == y_true)
    wrong = np.flatnonzero(proba.argmax(axis=1) != y_true)
    chosen = [rng.choice(group, min(n, len(group)), replace=False)
              for group, n in ((right, n_right), (wrong, n_wrong))]
    return [int(i) for i in np.concatenate(chosen)]


def saved_or_predicted(name, model, x_test, arrays_dir="arrays", check=8):
    """The probabilities TestModels.ipynb saved for ``name``, else a fresh prediction.

    The saved ones are used only when they fit ``x_test`` and ``model`` still gives them on
    its first ``check`` images (to the float16 they are kept in): a model trained again since
    is predicted afresh, never shown with another model's probabilities.
    """
    path = proba_path(name, arrays_dir)
    if os.path.exists(path):
        proba = artifacts.load_array(path).astype(np.float32)
        if (proba.shape == (len(x_test), data.NUM_CLASSES)
                and np.allclose(predict_raw(model, x_test[:check], description=None), proba[:check],
                                atol=2e-3)):
            print(f"Reusing {path} (saved by TestModels.ipynb).")
            return proba
    return predict_in_batches(model, x_test, description=f"predict {name}")
