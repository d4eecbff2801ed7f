"""TestModels' evaluation, eager float32 against the package's, side by side in one run.

For each shipped model, in turn, both ways compute what TestModels.ipynb computes from
predictions: the results row (top-1, top-5, superclass accuracy, macro F1, ECE), the flip
TTA columns, the temperature and the ECE/NLL before and after it, and the accuracy on the
seven corruptions at five severities (1,000 test images).

- eager (eager float32): every figure predicted on its own, in float32, by calling the model
  eagerly on batches of 500 (the test images predicted again for the TTA and the robustness
  subset);
- package (the package's evaluation, as TestModels.ipynb calls it): each prediction made once
  and reused, the compiled predict step, and, at ``--precision auto`` on a CPU with native
  bfloat16, the TTA's mirror images and the corrupted images predicted in bfloat16 with every
  close call predicted again in float32.

The two ways alternate model by model (eager first for one model, package first for the
next), so that a machine shared with other work slows both alike. The corrupted images are
made once and counted in both totals; figures and the notebook's plots are not timed. At the
end every figure of both ways is compared: the report says the largest difference.

Usage (real data, the committed models):

    CIFAR100_ARCHIVE=path/to/cifar-100-python.tar.gz CIFAR100_VERIFY=0 \\
        python benchmarks/testmodels_speed.py [--models third baseline] [--precision auto]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cifar100cnn import (artifacts, calibration, data, environment, evaluation, inference,  # noqa: E402
                         robustness)


# ---------------------------------------------------------------------------
# Eager float32: one eager call per batch of 500, nothing reused
# ---------------------------------------------------------------------------

def eager_predict(model, x, batch_size=500):
    return np.concatenate([np.asarray(model(x[i:i + batch_size], training=False), np.float32)
                           for i in range(0, len(x), batch_size)])


def eager(name, model, sets, dataset, subset):
    x_test, y_test = dataset.x_test, dataset.y_test
    model(x_test[:500], training=False)  # the eager way's warm-up
    proba = eager_predict(model, x_test)
    row = evaluation.evaluate(name, y_test, proba, dataset.fine_to_coarse)
    tta = sum(eager_predict(model, view) for view in evaluation.tta_views(x_test)) / 2
    row.update(evaluation.tta_scores(y_test, tta))
    calib = calibration.calibrate(name, dataset.y_val, eager_predict(model, dataset.x_val),
                                  y_test, proba)
    x_sub, y_sub = x_test[subset], y_test[subset]
    clean = eager_predict(model, x_sub)
    accuracy = [[np.mean(eager_predict(model, sets[(c, s)][0]).argmax(1) == y_sub)
                 for s in robustness.SEVERITIES] for c in robustness.CORRUPTIONS]
    robust = robustness.Robustness(name, float(np.mean(clean.argmax(1) == y_sub)),
                                   robustness.CORRUPTIONS, np.array(accuracy), len(subset))
    return figures(row, calib, robust)


# ---------------------------------------------------------------------------
# The package's evaluation: its functions as TestModels.ipynb calls them
# ---------------------------------------------------------------------------

def package(name, model, sets, dataset, subset, precision, batch_size, scratch):
    x_test, y_test = dataset.x_test, dataset.y_test
    probabilities, rows = evaluation.evaluate_all({name: model}, x_test, y_test, dataset.fine_to_coarse,
                                                  arrays_dir=scratch, batch_size=batch_size,
                                                  tta=True, precision=precision)
    proba = probabilities[name]
    calib, = calibration.calibrate_models({name: model}, dataset.x_val, dataset.y_val, y_test,
                                         probabilities, batch_size)
    robust = robustness.evaluate_robustness(model, x_test[subset], y_test[subset], sets, name,
                                            batch_size, clean_proba=proba[subset], precision=precision)
    return figures(rows[0], calib, robust)


def figures(row, calib, robust):
    values = {key: row[key] for key in ("top1", "top5", "superclass_acc", "macro_f1", "ece",
                                        "tta_top1", "tta_top5")}
    values.update(temperature=calib.temperature, ece_before=calib.ece_before,
                  ece_after=calib.ece_after, nll_before=calib.nll_before, nll_after=calib.nll_after,
                  robust_clean=robust.clean, robust_mean=robust.mean_corruption_accuracy)
    values.update({f"{c}_s{s}": float(robust.accuracy[i, s - 1])
                   for i, c in enumerate(robust.corruptions) for s in robustness.SEVERITIES})
    return values


def cpu_description():
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return (f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs, "
            f"bfloat16 flags: {', '.join(native) or 'none'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["third", "baseline", "overfit", "third_original"],
                        help="shipped models to evaluate (default: the four committed ones)")
    parser.add_argument("--models-dir", default=os.path.join(ROOT, "models"),
                        help="folder of the .keras files (default: the repository's models/)")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="the package way's precision for the TTA views and corrupted images "
                             "(default auto)")
    parser.add_argument("--batch-size", type=int, default=250,
                        help="the package way's batch size (default 250)")
    parser.add_argument("--robustness-size", type=int, default=1000,
                        help="test images under every corruption (default 1000, as TestModels)")
    parser.add_argument("--json", help="also write the timings and figures to this JSON file")
    args = parser.parse_args(argv)

    import keras

    archive, verify = environment.archive_settings()
    dataset = data.load_dataset("cifar100", archive=archive, verify=verify)
    precision = inference.resolve_precision(args.precision)
    subset = robustness.fixed_subset(len(dataset.x_test), args.robustness_size, seed=0)
    start = time.perf_counter()
    sets = robustness.corrupted_sets(dataset.x_test[subset], dataset.y_test[subset], seed=0)
    corrupting = time.perf_counter() - start

    times, results = {}, {}
    scratch = tempfile.mkdtemp()  # the package way saves the probabilities, as the notebook does
    for index, name in enumerate(args.models):
        model = artifacts.load_model(artifacts.model_path(name, args.models_dir))
        order = ("eager", "package") if index % 2 == 0 else ("package", "eager")
        for way in order:
            start = time.perf_counter()
            if way == "eager":
                results[(name, way)] = eager(name, model, sets, dataset, subset)
            else:
                results[(name, way)] = package(name, model, sets, dataset, subset, precision,
                                               args.batch_size, scratch)
            times[(name, way)] = time.perf_counter() - start
            print(f"{name} {way}: {times[(name, way)]:.1f} s", flush=True)

    total = {way: corrupting + sum(t for (n, w), t in times.items() if w == way)
             for way in ("eager", "package")}
    worst = max((abs(results[(n, "eager")][k] - results[(n, "package")][k]), n, k)
                for n in args.models for k in results[(n, "eager")])
    command = "python benchmarks/testmodels_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\nmachine: {cpu_description()}")
    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}; "
          f"the package way's precision: {precision}, "
          f"batch {args.batch_size}; corrupting the images: {corrupting:.1f} s (counted in both)")
    print(f"{'model':<16}{'eager s':>11}{'package s':>11}{'ratio':>8}")
    for name in args.models:
        e, p = times[(name, "eager")], times[(name, "package")]
        print(f"{name:<16}{e:>11.1f}{p:>11.1f}{p / e:>8.2f}")
    print(f"{'total':<16}{total['eager']:>11.1f}{total['package']:>11.1f}"
          f"{total['package'] / total['eager']:>8.2f}")
    print(f"largest difference between the two ways' figures: {worst[0]:.2g} ({worst[1]}, {worst[2]})")
    same = all(round(results[(n, "eager")][k], 3) == round(results[(n, "package")][k], 3)
               for n in args.models for k in results[(n, "eager")])
    print(f"every figure the same to 3 decimals: {same}")
    print(f"command: {command}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"times": {f"{n}/{w}": t for (n, w), t in times.items()}, "total": total,
                       "corrupting_s": corrupting, "precision": precision,
                       "figures": {f"{n}/{w}": v for (n, w), v in results.items()},
                       "machine": cpu_description(), "command": command}, handle, indent=1)


if __name__ == "__main__":
    main()
