"""The prepared device check: one command, one table.

    python benchmarks/gpu_check.py [--archive PATH] [--out results.json]   # on a GPU
    python benchmarks/gpu_check.py --dry [--out results.json]       # CPU, tiny synthetic data

Rows: the hardware line; a quick pipeline with every GPU path on (XLA, augmentation inside the
model, mixed_float16, MirroredStrategy on several GPUs), each model saved float32 and loaded in
safe mode; two epochs of each model on real CIFAR-100 with seconds per epoch (the second epoch:
the first one also compiles); the projected full default pipeline (epochs of ``RECIPES`` x
seconds per epoch, plus VGG16's features) and the projected tuned third model. Sized for at
most 8 minutes on one H100 (``--budget`` skips what would not fit). ``--dry`` runs the same
steps on tiny synthetic data and small widths: a CI-size check of the script itself.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import warnings

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
DEFAULT_ARCHIVE = os.path.join(REPO_ROOT, "..", "shared", "data", "cifar-100-python.tar.gz")
GOAL_S = 600  # the whole default pipeline in 10 minutes on one H100

# name, recipe: the image models of the default pipeline (ThirdModel trains both third ones).
IMAGE_MODELS = (("baseline", "baseline"), ("overfit", "overfit"),
                ("third_original", "third_original"), ("third", "third_tuned"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", default=DEFAULT_ARCHIVE,
                        help="cifar-100-python.tar.gz (read with the sha256 check off)")
    parser.add_argument("--dry", action="store_true",
                        help="CPU, tiny synthetic data, small widths: checks the script in CI time")
    parser.add_argument("--out", default=None, help="also write the results to this JSON file")
    parser.add_argument("--budget", type=float, default=480,
                        help="seconds; steps that start later are skipped (default 480)")
    return parser.parse_args(argv)


class Clock:
    """Seconds since the check began; ``over()`` once the budget is spent."""

    def __init__(self, budget):
        self.start, self.budget = time.perf_counter(), budget

    def elapsed(self):
        return time.perf_counter() - self.start

    def over(self):
        return self.elapsed() > self.budget


def builders(data, dry):
    """name -> function building the model (the tuned third model at 1/8 width when dry)."""
    from cifar100cnn import models, recipes

    widths = (16, 32, 64) if dry else recipes.THIRD_TUNED.widths
    return {"baseline": models.build_baseline, "overfit": models.build_overfit,
            "third_original": models.build_third_original,
            "third": lambda: models.build_third("tuned", data.x_train, widths=widths)}


def quietly(run, *args, **kwargs):
    """``run(...)`` with its prints hidden; returns ``(result, FastPathWarning texts)``."""
    from cifar100cnn import training

    with warnings.catch_warnings(record=True) as caught, \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        result = run(*args, **kwargs)
    return result, [str(w.message) for w in caught if w.category is training.FastPathWarning]


def quick_pipeline(data, strategy, folder, dry):
    """One epoch of each model with every GPU path forced; each saved model is loaded in
    safe mode and must be float32. Returns a result row. Dry: the third model's original
    recipe alone (it has every path; XLA compilation costs a CPU 5-15 s per model)."""
    from cifar100cnn import artifacts, hardware, recipes, training

    started, fallbacks, loaded = time.perf_counter(), [], 0
    build = builders(data, dry)
    chosen = IMAGE_MODELS[2:3] if dry else IMAGE_MODELS
    with hardware.precision_policy("mixed_float16"):
        for name, recipe in chosen:
            _, fell = quietly(training.train_image_model, name, build[name], data,
                              recipes.recipe(recipe, epochs=1), folder, strategy=strategy, verbose=0,
                              augment_on="model", jit_compile=True, precision="mixed_float16")
            fallbacks += fell
            model = artifacts.load_model(artifacts.model_path(name, folder))
            loaded += {w.dtype for w in model.weights} == {"float32"}
    paths = "XLA, augmentation in the model, mixed_float16"
    if strategy.num_replicas_in_sync > 1:
        paths += f", MirroredStrategy x{strategy.num_replicas_in_sync}"
    note = (f"{len(chosen)} model(s), 1 epoch each on {len(data.x_train):,} images: "
            f"{loaded} saved float32 and loaded in safe mode; "
            + ("no fallback" if not fallbacks else "fallbacks: " + " | ".join(fallbacks)))
    return dict(step=f"quick pipeline, every GPU path on ({paths})",
                seconds=time.perf_counter() - started, note=note, ok=loaded == len(chosen))


def two_epochs(name, recipe, build, data, strategy, folder, precision):
    """Two epochs of one model on ``data`` with the default (automatic) paths."""
    from cifar100cnn import recipes, training

    started = time.perf_counter()
    path = training.fast_path(recipes.RECIPES[recipe].augmentation, strategy=strategy,
                              precision=precision)
    (_, history), fell = quietly(training.train_image_model, name, build, data,
                                 recipes.recipe(recipe, epochs=2), folder, strategy=strategy,
                                 verbose=0, precision=precision)
    first, second = history["seconds"][:2]
    note = (f"first epoch {first:.1f} s (with compilation); path: "
            + (", ".join(path.fast_parts()) or "plain") + ("; " + " | ".join(fell) if fell else ""))
    return dict(step=f"{name}: 2 epochs", model=name, recipe=recipe, epoch_s=second,
                seconds=time.perf_counter() - started, note=note)


def vgg16_epochs(data, strategy, folder, precision):
    """VGG16 (random weights: the speed is the same): features once, then 2 head epochs."""
    from cifar100cnn import recipes, transfer

    started = time.perf_counter()
    (_, history), fell = quietly(transfer.train_vgg16, data, recipes.recipe("vgg16", epochs=2),
                                 weights=None, models_dir=folder, strategy=strategy, verbose=0,
                                 precision=precision)
    total = time.perf_counter() - started
    features = total - sum(history["seconds"])
    note = (f"features of {len(data.x_train) + len(data.x_val):,} images {features:.1f} s (once); "
            "random weights, same speed" + ("; " + " | ".join(fell) if fell else ""))
    return dict(step="vgg16: features + 2 head epochs", model="vgg16", recipe="vgg16",
                epoch_s=history["seconds"][1], features_s=features, seconds=total, note=note)


def projections(rows, n_train):
    """The default pipeline's and the tuned model's training time from the measured epochs,
    scaled to 40,000 training images when the data was smaller."""
    from cifar100cnn.recipes import RECIPES

    scale = 40_000 / n_train
    measured = {row["model"]: row for row in rows if "epoch_s" in row}
    parts = {name: RECIPES[row["recipe"]].epochs * row["epoch_s"] * scale
             for name, row in measured.items()}
    if "vgg16" in measured:
        parts["vgg16"] += measured["vgg16"]["features_s"] * scale
    missing = [name for name, _ in IMAGE_MODELS + (("vgg16", "vgg16"),) if name not in parts]
    total = sum(parts.values())
    scaled = "" if scale == 1 else f" (scaled x{scale:.0f} to 40,000 images)"
    formula = " + ".join(f"{name} {RECIPES[measured[name]['recipe']].epochs} ep"
                         for name in parts)
    verdict = "goal <= 10 min: " + ("met" if total <= GOAL_S and not missing else "not met")
    result = [dict(step="projected full default pipeline (training)", seconds=total,
                   note=f"{formula}{scaled}; {verdict}"
                        + (f"; not measured: {', '.join(missing)}" if missing else ""))]
    if "third" in parts:
        result.append(dict(step="projected tuned third model", seconds=parts["third"],
                           note=f"{RECIPES['third_tuned'].epochs} epochs x "
                                f"{measured['third']['epoch_s']:.1f} s{scaled}"))
    return result


def load_data(args):
    from cifar100cnn import data

    if args.dry:
        return data.synthetic_dataset(160, 40, seed=0, source="synthetic (dry run)")
    if not os.path.isfile(args.archive):
        raise SystemExit(f"CIFAR-100 archive not found: {args.archive}. Pass --archive "
                         "/path/to/cifar-100-python.tar.gz, or --dry for a CPU check of the "
                         "script.")
    return data.load_dataset("cifar100", archive=args.archive, verify=False)


def run_check(args):
    from cifar100cnn import data as data_module
    from cifar100cnn.hardware import set_up_hardware

    clock = Clock(args.budget)
    setup = set_up_hardware("auto")
    strategy, hardware = setup.strategy, setup.description
    rows = [dict(step="hardware", note=hardware)]
    data = load_data(args)
    rows.append(dict(step="data", seconds=clock.elapsed(), note=data.describe()))
    folder = tempfile.mkdtemp(prefix="gpu_check_")
    small = data if args.dry else data_module.synthetic_dataset(2_500, 500,
                                                                source="synthetic (quick)")
    rows.append(quick_pipeline(small, strategy, os.path.join(folder, "quick"), args.dry))
    build = builders(data, args.dry)
    for name, recipe in IMAGE_MODELS:
        if clock.over():
            rows.append(dict(step=f"{name}: 2 epochs", note="skipped: time budget spent"))
            continue
        rows.append(two_epochs(name, recipe, build[name], data, strategy,
                               os.path.join(folder, "real"), setup.precision))
    if clock.over():
        rows.append(dict(step="vgg16: features + 2 head epochs", note="skipped: time budget spent"))
    else:
        rows.append(vgg16_epochs(data, strategy, os.path.join(folder, "real"), setup.precision))
    rows += projections(rows, len(data.x_train))
    rows.append(dict(step="this check", seconds=clock.elapsed(),
                     note=f"budget {args.budget:.0f} s; data: {data.source}"))
    return rows


def render(rows):
    def cell(value, digits=1):
        return "" if value is None else f"{value:,.{digits}f}"

    lines = ["| step | seconds | s per epoch | note |", "|---|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['step']} | {cell(row.get('seconds'))} | "
                     f"{cell(row.get('epoch_s'), 2)} | {row.get('note', '')} |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported
    os.environ.setdefault("TQDM_DISABLE", "1")
    rows = run_check(args)
    print(render(rows), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"dry": args.dry, "rows": rows}, handle, indent=1)
    return 0 if all(row.get("ok", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
