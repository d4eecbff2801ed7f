"""The third model's recipes side by side: training seconds per epoch of the ResNet-9
recipe (``third_resnet9``) and the tuned one, in float32 and mixed_bfloat16, measured in one run on this machine;
and the accuracy-versus-time curve built from those timings and the recorded training runs.

    python benchmarks/third_recipes.py speed [--steps 6] [--rounds 2]   # 5-15 minutes on 2 CPU cores
    python benchmarks/third_recipes.py curve                            # figure + table, no training
    python benchmarks/third_recipes.py precision --archive A [--no-verify]  # same short run, both precisions
    python benchmarks/third_recipes.py budget --epochs N --archive A [--no-verify] [--record]

``speed`` times each recipe's training steps in float32 and mixed_bfloat16 on synthetic
CIFAR-shaped data: ``train_on_batch`` on fixed batches augmented beforehand, after one warm-up
step, each measurement in a cleared Keras session with its precision checked on the built
model (timing a few steps of ``fit`` through the augmenting input pipeline, all in one
session, gives larger and less repeatable figures; see docs/efficiency.md); the input pipeline is timed apart, threads and XLA are recorded. The recipes
and precisions take turns, in reverse order every other round, so that a shared CPU loads them
alike. One epoch = the steps over 40,000 training images + predictions on 10,000 validation
images. Results: docs/recipes/speed.json. ``curve`` reads it together with docs/recipes/runs.json
(test accuracies of real CIFAR-100 runs, each with where it ran) and writes
docs/recipes/accuracy_vs_time.png and docs/recipes/curve.md. ``precision`` trains the tuned
recipe briefly on real CIFAR-100 (a subset of the training split, the full validation split)
once in float32 and once in mixed_bfloat16 from the same seed, and compares validation
accuracy and time: docs/recipes/precision.json. ``budget`` trains one recipe for N epochs on
real CIFAR-100 (the full split, the precision ``auto`` picks) and measures its test top-1 once;
``--record`` adds the run to docs/recipes/runs.json, a point of the curve. Its checkpoints sit
in --work, so an interrupted run resumes where it stopped.
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
OUT_DIR = os.path.join(REPO_ROOT, "docs", "recipes")
RECIPE_NAMES = ("third_resnet9", "third_tuned")
PRECISIONS = ("float32", "mixed_bfloat16")
N_TRAIN, N_VAL = 40_000, 10_000


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines()
                    if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def build(recipe_name, x_train):
    """The model of ``recipe_name``, built by the package from its recipe (the whitening, where
    it has one, from ``x_train``)."""
    from cifar100cnn import models

    return models.build(recipe_name, whitening_images=x_train)


def time_recipe(recipe_name, precision, x, y, steps):
    """Seconds per training step and per validation image of one recipe in one precision.

    Training steps only, as a training run's steps: ``train_on_batch`` on fixed batches
    augmented once beforehand (the input pipeline is timed apart: ``time_pipeline``), without
    XLA (as ``training.use_jit`` decides on a CPU). Each measurement starts from a cleared
    session, and the precision is set after clearing it: ``keras.backend.clear_session()``
    resets Keras' global dtype policy to float32, so a policy set before it would silently
    be lost. The model's compute dtype is checked, not assumed.
    """
    import keras

    from cifar100cnn import hardware, recipes
    from cifar100cnn.optimization import compile_model

    keras.backend.clear_session()
    with hardware.precision_policy(precision):
        recipe = recipes.RECIPES[recipe_name]
        model = build(recipe_name, x)
        compile_model(model, recipe, -(-N_TRAIN // recipe.batch_size), jit_compile=False)
        dtypes = {layer.compute_dtype for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
                  and layer.trainable}
        expected = "bfloat16" if precision == "mixed_bfloat16" else "float32"
        if dtypes != {expected}:
            raise RuntimeError(f"{recipe_name} built for {precision} computes in {sorted(dtypes)}")
        step = step_seconds(model, recipe, x, y, steps)
        val = x[:1000].astype("float32")
        model.predict_on_batch(val[:500])
        start = time.perf_counter()
        for i in range(0, len(val), 500):
            model.predict_on_batch(val[i:i + 500])
        per_val_image = (time.perf_counter() - start) / len(val)
    steps_per_epoch = -(-N_TRAIN // recipe.batch_size)
    return dict(step_seconds=step, val_image_seconds=per_val_image,
                steps_seconds=steps_per_epoch * step, val_seconds=N_VAL * per_val_image,
                epoch_seconds=steps_per_epoch * step + N_VAL * per_val_image,
                compute_dtype=expected)


def step_seconds(trainee, recipe, x, y, steps):
    """Seconds per ``train_on_batch`` of the compiled ``trainee`` on fixed batches of ``x``, ``y``
    that the recipe's augmentation made once beforehand, after one warm-up step."""
    import numpy as np

    from cifar100cnn import augment

    augmentation = augment.build_augmentation(recipe.augmentation, seed=0)
    b = recipe.batch_size
    batches = [(np.asarray(augmentation(x[i:i + b].astype("float32"), training=True)), y[i:i + b])
               for i in range(0, (steps + 1) * b, b)]
    trainee.train_on_batch(*batches[0])  # warm-up: tracing, oneDNN set-up
    start = time.perf_counter()
    for images, labels in batches[1:steps + 1]:
        trainee.train_on_batch(images, labels)
    return (time.perf_counter() - start) / steps


def time_pipeline(recipe_name, x, y, batches):
    """Seconds per epoch the input pipeline alone takes (augmentation in parallel tf.data map
    calls, as in training on a CPU): on the same cores, a training run pays part of it."""
    from cifar100cnn import augment, recipes, tf_pipeline

    recipe = recipes.RECIPES[recipe_name]
    pipeline = tf_pipeline.make_pipeline(x, y, recipe.batch_size, shuffle=True,
                                  augment=augment.build_augmentation(recipe.augmentation, seed=0))
    iterator = iter(pipeline.repeat())
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches * -(-N_TRAIN // recipe.batch_size)


def threads():
    import tensorflow as tf

    return dict(intra_op=tf.config.threading.get_intra_op_parallelism_threads() or "default",
                inter_op=tf.config.threading.get_inter_op_parallelism_threads() or "default")


def speed(args):
    from cifar100cnn import data, recipes

    x, y = data.make_synthetic(4096, 16, seed=0)[0]
    samples = {(r, p): [] for r in RECIPE_NAMES for p in PRECISIONS}
    for round_ in range(args.rounds):
        # Take turns, in a different order each round, so that a shared CPU loads all alike.
        order = [(r, p) for p in PRECISIONS for r in RECIPE_NAMES]
        for recipe_name, precision in (order if round_ % 2 == 0 else order[::-1]):
            result = time_recipe(recipe_name, precision, x, y, args.steps)
            samples[(recipe_name, precision)].append(result)
            print(recipe_name, precision, {k: round(v, 4) if isinstance(v, float) else v
                                           for k, v in result.items()}, flush=True)
    pipeline = {name: time_pipeline(name, x, y, args.steps) for name in RECIPE_NAMES}
    print("input pipeline alone, s / epoch:", {k: round(v) for k, v in pipeline.items()}, flush=True)
    rows = []
    for (recipe_name, precision), results in samples.items():
        epoch = statistics.median(r["epoch_seconds"] for r in results)
        epochs = recipes.RECIPES[recipe_name].epochs
        rows.append(dict(recipe=recipe_name, precision=precision, epoch_seconds=epoch,
                         steps_seconds=statistics.median(r["steps_seconds"] for r in results),
                         epochs=epochs, training_minutes=epoch * epochs / 60,
                         pipeline_seconds=pipeline[recipe_name],
                         samples=[r["epoch_seconds"] for r in results]))
    report = dict(cpu=cpu_name(), cores=os.cpu_count(), steps=args.steps, rounds=args.rounds,
                  threads=threads(), xla=False,
                  command=f"python benchmarks/third_recipes.py speed --steps {args.steps} "
                          f"--rounds {args.rounds}",
                  what="training steps on 40,000 images (train_on_batch on fixed, pre-augmented "
                       "batches) + predictions on 10,000 validation images; the input pipeline "
                       "timed apart",
                  data="synthetic CIFAR-shaped images (speed does not depend on content)",
                  rows=rows)
    path = args.output or os.path.join(OUT_DIR, "speed.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    print(speed_table(report))


def speed_table(report):
    lines = [f"Training time per epoch ({report['what']}), {report['cpu']}, {report['cores']} "
             f"cores, {report['data']}; `{report['command']}`:", "",
             "| recipe | precision | s / epoch | epochs | whole training |",
             "|---|---|---:|---:|---:|"]
    for row in report["rows"]:
        lines.append(f"| {row['recipe']} | {row['precision']} | {row['epoch_seconds']:.0f} | "
                     f"{row['epochs']} | {row['training_minutes']:.0f} min |")
    return "\n".join(lines)


def curve(args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.speed or os.path.join(OUT_DIR, "speed.json")) as f:
        report = json.load(f)
    with open(os.path.join(OUT_DIR, "runs.json")) as f:
        runs = json.load(f)["runs"]
    epoch_seconds = {(r["recipe"], r["precision"]): r["epoch_seconds"] for r in report["rows"]}
    # The robust preset trains the tuned network with changes outside the step's arithmetic
    # (benchmarks/corruption_cost.py: 0.99 of the tuned step), so it is placed at the tuned
    # recipe's seconds per epoch.
    for kind in PRECISIONS:
        if ("third_tuned", kind) in epoch_seconds:
            epoch_seconds.setdefault(("third_robust", kind), epoch_seconds[("third_tuned", kind)])
    precision = args.precision
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"third_resnet9": ("tab:gray", "ResNet-9 recipe (width 32)"),
              "third_tuned": ("tab:blue", "tuned recipe (whitened CNN, 128-256-512)"),
              "third_robust": ("tab:red", "robust preset (the tuned recipe made robust)")}
    lines = [f"Test top-1 on CIFAR-100 (a copy checked against the official release) against "
             f"training minutes on {report['cpu']} ({report['cores']} cores, {precision}); "
             f"minutes = epochs x the seconds per epoch above:", "",
             "| recipe | epochs | minutes | test top-1 | where the run was trained |",
             "|---|---:|---:|---:|---|"]
    for recipe_name, (color, label) in styles.items():
        points = sorted((r for r in runs if r["recipe"] == recipe_name), key=lambda r: r["epochs"])
        for on_gpu, marker, style in ((True, "o", "--"), (False, "s", "-")):
            chosen = [r for r in points if r["trained_on"].startswith("H200") == on_gpu]
            if chosen:
                minutes = [r["epochs"] * epoch_seconds[(recipe_name, precision)] / 60 for r in chosen]
                where = "trained on an H200" if on_gpu else "trained on 2 CPU cores"
                ax.plot(minutes, [r["test_top1"] for r in chosen], marker=marker, ls=style,
                        color=color, label=f"{label}, {where}")
        for r in points:
            m = r["epochs"] * epoch_seconds[(recipe_name, precision)] / 60
            lines.append(f"| {recipe_name} | {r['epochs']} | {m:.0f} | {r['test_top1']:.4f} | {r['trained_on']} |")
    today = next(r for r in runs if r["recipe"] == "third_resnet9" and r["epochs"] == 30
                 and not r["trained_on"].startswith("H200"))
    ax.axhline(today["test_top1"], color="tab:gray", ls=":", lw=1,
               label=f"the ResNet-9 recipe's 30-epoch model ({today['test_top1']:.3f})")
    ax.axvline(30 * epoch_seconds[("third_resnet9", precision)] / 60 / 3, color="tab:gray", ls="--", lw=1,
               label="1/3 of the ResNet-9 recipe's time")
    ax.set_xlabel(f"minutes of training steps: epochs x measured s/epoch\n({report['cores']} cores "
                  f"of an {report['cpu']}, {precision})", fontsize=9)
    ax.set_ylabel("test top-1 (CIFAR-100)")
    ax.set_title("Third model: accuracy versus training time")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT_DIR, "accuracy_vs_time.png"), dpi=120)
    with open(os.path.join(OUT_DIR, "curve.md"), "w") as f:
        f.write(speed_table(report) + "\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def precision_check(args):
    """The same short tuned-recipe run in float32 and mixed_bfloat16 on real CIFAR-100."""
    import keras

    from cifar100cnn import data, models, recipes, training

    dataset = data.load_dataset("cifar100", archive=args.archive, verify=not args.no_verify)
    subset = dataclasses.replace(dataset, x_train=dataset.x_train[:args.train],
                                 y_train=dataset.y_train[:args.train])
    results = []
    for precision in PRECISIONS:
        keras.mixed_precision.set_global_policy(precision)
        work = os.path.join("/tmp", f"precision_check_{precision}")
        start = time.perf_counter()
        model, history = training.train_image_model(
            "third", lambda: models.build_third("tuned", whitening_images=subset.x_train), subset,
            recipes.recipe("third_tuned", epochs=args.epochs), work, retrain=True, verbose=0,
            precision=precision)
        results.append(dict(precision=precision, seconds=time.perf_counter() - start,
                            val_accuracy=history["val_accuracy"]))
        print(results[-1], flush=True)
    report = dict(cpu=cpu_name(), cores=os.cpu_count(), date=time.strftime("%Y-%m-%d"),
                  data="CIFAR-100 (a copy checked against the official release)",
                  train_images=args.train, val_images=len(dataset.x_val), epochs=args.epochs,
                  command=f"python benchmarks/third_recipes.py precision --epochs {args.epochs} "
                          f"--train {args.train}", results=results)
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "precision.json"), "w") as f:
        json.dump(report, f, indent=1)


def budget(args):
    """Train ``args.recipe`` for ``args.epochs`` epochs on real CIFAR-100 and test it once."""
    import keras
    import tensorflow as tf

    from cifar100cnn import data, hardware, inference, recipes, training

    precision = hardware.set_up_hardware(args.precision).precision
    bf16 = sorted(hardware.cpu_flags() & set(hardware.BF16_CPU_FLAGS))
    machine = f"{os.cpu_count()} CPU cores ({', '.join([cpu_name(), *bf16])})"
    dataset = data.load_dataset("cifar100", archive=args.archive, verify=not args.no_verify)
    start = time.perf_counter()
    model, history = training.train_image_model(
        "third", lambda: build(args.recipe, dataset.x_train), dataset, recipes.recipe(args.recipe, epochs=args.epochs), args.work,
        verbose=2, precision=precision)
    wall = time.perf_counter() - start
    probabilities = inference.predict_in_batches(model, dataset.x_test)
    test_top1 = float((probabilities.argmax(1) == dataset.y_test.ravel()).mean())
    run = dict(recipe=args.recipe, epochs=args.epochs, test_top1=round(test_top1, 4),
               val_top1=round(float(history["val_accuracy"][-1]), 4),
               trained_on=f"{machine}, TensorFlow {tf.__version__}, {precision}: "
                          f"python benchmarks/third_recipes.py budget --epochs {args.epochs}"
                          f" --recipe {args.recipe}, not shipped",
               minutes_of_this_run=round(wall / 60, 1))
    print(json.dumps(run), flush=True)
    if args.record:
        path = os.path.join(OUT_DIR, "runs.json")
        with open(path) as f:
            recorded = json.load(f)
        recorded["runs"].append(run)
        with open(path, "w") as f:
            json.dump(recorded, f, indent=1)
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description="The third model's recipes side by side.")
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("speed", help="time both recipes in both precisions")
    s.add_argument("--steps", type=int, default=6, help="timed training steps per measurement")
    s.add_argument("--rounds", type=int, default=2, help="measurements per recipe and precision")
    s.add_argument("--output", default=None,
                   help="where to write the JSON report (default: docs/recipes/speed.json)")
    c = commands.add_parser("curve", help="accuracy-versus-time figure and table")
    c.add_argument("--precision", default="mixed_bfloat16", choices=PRECISIONS,
                   help="whose seconds per epoch set the x axis (default: mixed_bfloat16)")
    c.add_argument("--speed", default=None,
                   help="the seconds per epoch to use (default: docs/recipes/speed.json)")
    p = commands.add_parser("precision", help="the same short real-data run in both precisions")
    p.add_argument("--archive", default=os.path.join(REPO_ROOT, "..", "shared", "data",
                                                    "cifar-100-python.tar.gz"))
    p.add_argument("--no-verify", action="store_true", help="skip the archive's sha256 check")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train", type=int, default=10_000, help="training images (first N of the split)")
    b = commands.add_parser("budget", help="one recipe for N epochs on real CIFAR-100, tested")
    b.add_argument("--epochs", type=int, required=True)
    b.add_argument("--recipe", choices=RECIPE_NAMES, default="third_tuned")
    b.add_argument("--precision", default="auto",
                   choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"))
    b.add_argument("--work", default=os.path.join("/tmp", "recipe_budget"),
                   help="checkpoints and the trained model (a resumed run continues from here)")
    b.add_argument("--record", action="store_true", help="add the result to docs/recipes/runs.json")
    b.add_argument("--archive", default=p.get_default("archive"))
    b.add_argument("--no-verify", action="store_true", help="skip the archive's sha256 check")
    args = parser.parse_args(argv)
    return {"speed": speed, "curve": curve, "precision": precision_check,
            "budget": budget}[args.command](args)


if __name__ == "__main__":
    main()
