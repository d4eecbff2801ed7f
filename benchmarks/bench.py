"""Speed and memory: the original project's way vs this package's, side by side.

    python benchmarks/bench.py [--quick [--cli]] [--skip-cli] [--full-pipeline] [--output docs/BENCHMARKS.md]

Everything runs on synthetic CIFAR-shaped data (``data.make_synthetic``), not CIFAR-100.
Small samples are timed (one warm-up, several repeats, median) and scaled linearly to the
full split (40,000 train / 10,000 validation images); each table says what was scaled.
"""

import argparse
import datetime
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TQDM_DISABLE", "1")  # predict_in_batches' progress bars off
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset")

N_TRAIN, N_VAL, N_TEST = 40_000, 10_000, 10_000

# Images timed per measurement; repeats are taken after one warm-up.
SIZES = {
    "quick": dict(vgg_train=200, vgg_extract=500, aug=2_000, model_train=1_000, infer=1_000,
                  repeats=3, cli_timeout=600),
    "full": dict(vgg_train=1_000, vgg_extract=2_000, aug=6_000, model_train=4_000, infer=4_000,
                 repeats=5, cli_timeout=1_800),
}
# Models that are timed on a smaller sample (divide by this), to keep the run short.
HEAVY = {"third_tuned": 4}

# The image models the full pipeline trains (recipes in models.RECIPES).
IMAGE_MODELS = ("baseline", "overfit", "third_original", "third_tuned")


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------

def wall_seconds(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def median_seconds(run, repeats):
    """Run once to warm up, then ``repeats`` times; the median wall time."""
    run()
    return statistics.median(wall_seconds(run) for _ in range(repeats))


def interleaved(runs, repeats):
    """Median result of each run, taken in turns (A B C A B C ...) after one warm-up each.

    The CPU is shared with other jobs, so the compared runs take turns to see the same load.
    Each run returns a number (seconds) or a dict of numbers.
    """
    for run in runs.values():
        run()
    samples = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(run())
    return {name: median_of(values) for name, values in samples.items()}


def median_of(values):
    if isinstance(values[0], dict):
        return {key: statistics.median(v[key] for v in values) for key in values[0]}
    return statistics.median(values)


def fmt(value, digits=1):
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_duration(seconds):
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def clear_keras():
    import keras
    keras.backend.clear_session()


# ---------------------------------------------------------------------------
# Timing a Keras fit: training, validation and callback phases of each epoch
# ---------------------------------------------------------------------------

def phase_timers():
    """Two callbacks: put the first before and the second after all others in ``fit``."""
    import keras

    epochs = []

    class Start(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.marks = {"begin": time.perf_counter()}

        def on_test_begin(self, logs=None):
            self.marks["val_begin"] = time.perf_counter()

        def on_test_end(self, logs=None):
            self.marks["val_end"] = time.perf_counter()

    start = Start()

    class End(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            marks = start.marks
            epochs.append(dict(train=marks["val_begin"] - marks["begin"],
                               val=marks["val_end"] - marks["val_begin"],
                               callbacks=time.perf_counter() - marks["val_end"]))

    return start, End(), epochs


def package_callbacks(work_dir):
    """The per-epoch callbacks ``training.fit`` uses: resume backup and best-weights checkpoint."""
    import keras
    from cifar100cnn.training import BestWeights

    return [BestWeights(os.path.join(work_dir, "best.weights.h5")),
            keras.callbacks.BackupAndRestore(os.path.join(work_dir, "backup"), double_checkpoint=True)]


def epoch_runner(model, work_dir, **fit_args):
    """A function that fits one epoch and returns its phase seconds (train, val, callbacks)."""
    start, end, epochs = phase_timers()

    def one_epoch():
        callbacks = [start] + package_callbacks(work_dir) + [end]
        model.fit(epochs=1, callbacks=callbacks, verbose=0, **fit_args)
        shutil.rmtree(work_dir, ignore_errors=True)
        return epochs[-1]

    return one_epoch


def full_epoch_seconds(phases, n_train, n_val):
    """Scale the measured phases to a 40,000 / 10,000 image epoch (callbacks: as measured)."""
    return (phases["train"] * N_TRAIN / n_train + phases["val"] * N_VAL / n_val
            + phases["callbacks"])


# ---------------------------------------------------------------------------
# 1. VGG16 transfer: frozen base every epoch vs cached features
# ---------------------------------------------------------------------------

def original_vgg16_model(base, head):
    """The original's model: frozen base + head as one model, one-hot labels."""
    import keras

    inputs = keras.Input(shape=(32, 32, 3))
    model = keras.Model(inputs, head(base(inputs, training=False)))
    model.compile(optimizer=keras.optimizers.RMSprop(1e-3), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def one_hot(y):
    return np.eye(100)[y]  # float64, as keras.utils.to_categorical gives


def original_vgg16_runner(x, y, size, work_dir):
    """One epoch the original's way on a sample: float64 x/255, one-hot labels, batch 100."""
    from cifar100cnn.models import build_vgg16_base, build_vgg16_head

    n_train, n_val = size["vgg_train"], size["vgg_train"] // 4
    x_float = x[:n_train + n_val] / 255.0  # float64, as the original held it
    labels = one_hot(y[:n_train + n_val])
    base = build_vgg16_base(weights=None)
    model = original_vgg16_model(base, build_vgg16_head(base.output_shape[1:]))
    return epoch_runner(model, work_dir, x=x_float[:n_train], y=labels[:n_train], batch_size=100,
                        validation_data=(x_float[n_train:], labels[n_train:]))


def head_runner(features, y, work_dir, steps_per_execution=None):
    """One head epoch on cached features at full size (40,000 / 10,000): no scaling."""
    from cifar100cnn.models import RECIPES, build_vgg16_head
    from cifar100cnn.training import compile_model, feature_pipeline

    recipe = RECIPES["vgg16"]
    train = np.resize(features, (N_TRAIN,) + features.shape[1:])
    val = np.resize(features, (N_VAL,) + features.shape[1:])
    train_ds = feature_pipeline(train, np.resize(y, N_TRAIN), recipe["batch_size"], shuffle=True)
    val_ds = feature_pipeline(val, np.resize(y, N_VAL), recipe["batch_size"])
    head = build_vgg16_head(features.shape[1:])
    compile_model(head, recipe, int(train_ds.cardinality()), recipe["epochs"])
    if steps_per_execution is not None:  # the package's recipe sets its own
        head.steps_per_execution = steps_per_execution
    return epoch_runner(head, work_dir, x=train_ds, validation_data=val_ds)


def extraction_runners(x, n):
    """The one-time feature pass: the package's predict_in_batches, and Keras' predict."""
    from cifar100cnn.models import build_vgg16_base
    from cifar100cnn.training import predict_in_batches, vgg16_feature_extractor

    extractor = vgg16_feature_extractor(build_vgg16_base(weights=None))
    features = predict_in_batches(extractor, x[:n])
    return features, {
        "extract": lambda: wall_seconds(lambda: predict_in_batches(extractor, x[:n])),
        "extract_predict": lambda: wall_seconds(
            lambda: extractor.predict(x[:n], batch_size=500, verbose=0)),
    }


def bench_vgg16(x, y, size, work_dir):
    n_train, n_val, n_extract = size["vgg_train"], size["vgg_train"] // 4, size["vgg_extract"]
    features, runs = extraction_runners(x, n_extract)
    runs["original"] = original_vgg16_runner(x, y, size, os.path.join(work_dir, "vgg_original"))
    runs["head"] = head_runner(features, y, os.path.join(work_dir, "vgg_head"))
    runs["head_before"] = head_runner(features, y, os.path.join(work_dir, "vgg_head"), 1)
    m = interleaved(runs, size["repeats"])
    clear_keras()
    original = dict(phases=m["original"], n_train=n_train, n_val=n_val,
                    epoch_s=full_epoch_seconds(m["original"], n_train, n_val))
    extraction = dict(n=n_extract, per_image=m["extract"] / n_extract,
                      per_image_predict=m["extract_predict"] / n_extract)
    head, head_before = ({"phases": m[k], "epoch_s": sum(m[k].values())} for k in ("head", "head_before"))
    epochs = 100
    extract_s = extraction["per_image"] * (N_TRAIN + N_VAL)
    return dict(original=original, extraction=extraction, head=head, head_before=head_before,
                epochs=epochs, extract_s=extract_s,
                original_stage_s=epochs * original["epoch_s"],
                ours_stage_s=extract_s + epochs * head["epoch_s"])


# ---------------------------------------------------------------------------
# 2. Augmentation input pipeline: ImageDataGenerator vs Keras layers in tf.data
# ---------------------------------------------------------------------------

def legacy_generator_batches(x, y):
    """tf_keras' ImageDataGenerator with the original's settings, or a NumPy/SciPy copy of it."""
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator
    except ImportError:
        return scipy_generator_batches(x, y), "NumPy/SciPy equivalent of ImageDataGenerator"
    generator = ImageDataGenerator(rotation_range=40, width_shift_range=0.2,
                                   height_shift_range=0.2, vertical_flip=True)
    return generator.flow(x, y, batch_size=100, shuffle=True), "tf_keras ImageDataGenerator"


def scipy_affine(image, rng):
    """One image as ImageDataGenerator transforms it: rotation 40, shifts 0.2, vertical flip."""
    from scipy import ndimage

    theta = np.deg2rad(rng.uniform(-40, 40))
    tx, ty = rng.uniform(-0.2, 0.2, 2) * 32
    rotation = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                         [0, 0, 1]])
    matrix = rotation @ np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
    centre = np.array([[1, 0, 15.5], [0, 1, 15.5], [0, 0, 1]])
    matrix = centre @ matrix @ np.linalg.inv(centre)
    out = np.stack([ndimage.affine_transform(image[..., c], matrix[:2, :2], matrix[:2, 2],
                                             order=1, mode="nearest") for c in range(3)], axis=-1)
    return out[::-1] if rng.random() < 0.5 else out


def scipy_generator_batches(x, y, batch_size=100, seed=0):
    rng = np.random.default_rng(seed)
    x = x.astype("float32")  # the generator holds a float32 copy

    def batches():
        while True:
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch_size):
                rows = order[start:start + batch_size]
                yield np.stack([scipy_affine(x[i], rng) for i in rows]), y[rows]

    return batches()


def three_layer_original_augmentation():
    """The package before: three Keras random layers, so three resamplings per image."""
    import keras

    return keras.Sequential([keras.layers.RandomRotation(40 / 360, fill_mode="nearest"),
                             keras.layers.RandomFlip("vertical"),
                             keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest")])


def bench_augmentation(x, y, size):
    from cifar100cnn.data import make_pipeline
    from cifar100cnn.models import build_augmentation

    n = size["aug"]
    batches, legacy_name = legacy_generator_batches(x[:n] / 255.0, one_hot(y[:n]))
    ours = make_pipeline(x[:n], y[:n], 100, shuffle=True, augment=build_augmentation("original"))
    before = make_pipeline(x[:n], y[:n], 100, shuffle=True, augment=three_layer_original_augmentation())
    m = interleaved({"legacy": lambda: wall_seconds(lambda: [next(batches) for _ in range(n // 100)]),
                     "ours": lambda: wall_seconds(lambda: [batch for batch in ours]),
                     "before": lambda: wall_seconds(lambda: [batch for batch in before])},
                    size["repeats"])
    clear_keras()
    return dict(n=n, legacy_name=legacy_name, legacy_ips=n / m["legacy"], ours_ips=n / m["ours"],
                before_ips=n / m["before"])


# ---------------------------------------------------------------------------
# 3. Peak memory of preparing and holding the data (fresh subprocess each way)
# ---------------------------------------------------------------------------

def peak_rss_mb():
    """Peak RSS of this process. VmHWM, unlike ru_maxrss, does not inherit the parent's peak."""
    try:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def hold_original(x, y):
    """The original: x/255 as float64 and one-hot float labels, train/val/test."""
    import keras

    x_train, x_test = x[:N_TRAIN + N_VAL] / 255, x[N_TRAIN + N_VAL:] / 255
    y_train = keras.utils.to_categorical(y[:N_TRAIN + N_VAL], 100)
    y_test = keras.utils.to_categorical(y[N_TRAIN + N_VAL:], 100)
    return (x_train[:N_TRAIN], y_train[:N_TRAIN], x_train[N_TRAIN:], y_train[N_TRAIN:],
            x_test, y_test)


def hold_ours(x, y):
    """Ours: uint8 images, int64 labels, the tf.data pipelines built and a first batch drawn."""
    from cifar100cnn.data import make_pipeline, split_train_val

    (x_tr, y_tr), (x_val, y_val) = split_train_val(x[:N_TRAIN + N_VAL], y[:N_TRAIN + N_VAL])
    train = make_pipeline(x_tr, y_tr, 100, shuffle=True)
    val = make_pipeline(x_val, y_val, 100)
    first = next(iter(train))  # fills the shuffle buffer
    return train, val, first, x[N_TRAIN + N_VAL:], y[N_TRAIN + N_VAL:]


def hold_arrays_only(x, y):
    """Ours without tf.data: the uint8 arrays split the original way (views)."""
    from cifar100cnn.data import split_train_val

    return split_train_val(x[:N_TRAIN + N_VAL], y[:N_TRAIN + N_VAL]), x[N_TRAIN + N_VAL:]


HOLD = {"original": hold_original, "ours": hold_ours, "ours, arrays only": hold_arrays_only}


def memory_worker(way, folder):
    """Run in a fresh interpreter: print baseline and peak RSS (MiB) of one way."""
    import keras  # noqa: F401 - both ways import TensorFlow/Keras before the data
    import tensorflow  # noqa: F401

    baseline = peak_rss_mb()
    x = np.load(os.path.join(folder, "x.npy"))
    y = np.load(os.path.join(folder, "y.npy"))
    held = HOLD[way](x, y)
    print(f"RSS {baseline:.1f} {peak_rss_mb():.1f} {len(held)}")


def run_memory_worker(way, folder):
    command = [sys.executable, os.path.abspath(__file__), "--memory-worker", way, folder]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RSS "))
    baseline, peak = (float(value) for value in line.split()[1:3])
    return dict(baseline=baseline, peak=peak, data=peak - baseline)


def bench_memory(work_dir):
    from cifar100cnn.data import make_synthetic

    (x, y), (x_test, y_test) = make_synthetic(N_TRAIN + N_VAL, N_TEST, seed=1)
    folder = os.path.join(work_dir, "memory")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "x.npy"), np.concatenate([x, x_test]))
    np.save(os.path.join(folder, "y.npy"), np.concatenate([y, y_test]))
    del x, x_test
    result = {way: run_memory_worker(way, folder) for way in HOLD}
    shutil.rmtree(folder, ignore_errors=True)
    return result


# ---------------------------------------------------------------------------
# 4. Training and inference of each model
# ---------------------------------------------------------------------------

def image_model_runner(name, x, y, size, work_dir, build=None, augment_on="auto"):
    """(model, one-epoch runner, n_train, n_val) for a model trained by its recipe on a sample,
    its augmentation placed as ``training.train_image_model`` places it."""
    from cifar100cnn.data import make_pipeline
    from cifar100cnn.models import BUILDERS, RECIPES
    from cifar100cnn.training import compile_model, model_to_train, pipeline_augmentation

    recipe = RECIPES[name]
    n_train = size["model_train"] // HEAVY.get(name, 1)
    n_val = n_train // 4
    val_ds = make_pipeline(x[n_train:n_train + n_val], y[n_train:n_train + n_val],
                           recipe["batch_size"])
    train_ds = make_pipeline(x[:n_train], y[:n_train], recipe["batch_size"], shuffle=True,
                             augment=pipeline_augmentation(recipe["augmentation"], 0, augment_on))
    model = (build or BUILDERS[name])()
    trainee = model_to_train(model, recipe["augmentation"], 0, augment_on)
    compile_model(trainee, recipe, int(train_ds.cardinality()), recipe["epochs"])
    runner = epoch_runner(trainee, os.path.join(work_dir, name), x=train_ds, validation_data=val_ds)
    return model, runner, n_train, n_val


def training_figures(name, phases, n_train, n_val):
    from cifar100cnn.models import RECIPES

    return dict(name=name, epochs=RECIPES[name]["epochs"], phases=phases, n_train=n_train,
                train_ips=n_train / phases["train"], epoch_s=full_epoch_seconds(phases, n_train, n_val))


def models_forward_flops(model):
    from cifar100cnn.models import forward_flops

    return forward_flops(model)


def bench_image_model(name, x, y, size, work_dir):
    model, runner, n_train, n_val = image_model_runner(name, x, y, size, work_dir)
    phases = interleaved({name: runner}, size["repeats"])[name]
    figures = dict(training_figures(name, phases, n_train, n_val), **bench_inference(model, x, size),
                   forward_flops=models_forward_flops(model))
    clear_keras()
    return figures


def bench_inference(model, x, size):
    """Images/s of the package's predict_in_batches and of Keras' compiled predict."""
    from cifar100cnn.training import predict_in_batches

    n = size["infer"]
    package_s = median_seconds(lambda: predict_in_batches(model, x[:n]), size["repeats"])
    keras_s = median_seconds(lambda: model.predict(x[:n], batch_size=500, verbose=0),
                             size["repeats"])
    return dict(infer_ips=n / package_s, predict_ips=n / keras_s)


def bench_vgg16_inference(x, size):
    from cifar100cnn.models import build_vgg16

    model = build_vgg16(weights=None)
    small = dict(size, infer=min(size["infer"], size["vgg_extract"]),
                 repeats=max(1, size["repeats"] - 2))
    result = dict(bench_inference(model, x, small), forward_flops=models_forward_flops(model),
                  head_flops=models_forward_flops(model.get_layer("vgg16_head")))
    clear_keras()
    return result


def bench_models(x, y, size, work_dir):
    results = [bench_image_model(name, x, y, size, work_dir) for name in IMAGE_MODELS]
    return results, bench_vgg16_inference(x, size)


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next(line for line in handle if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def third_tuned_variants():
    """label -> (build, precision policy, augment_on) for the package's third_tuned and the
    options timed against it. The package: its model, the policy ``configure_hardware`` set,
    augmentation where "auto" puts it."""
    import keras
    from cifar100cnn.models import build_third_tuned
    from cifar100cnn.training import augment_in_model

    policy = keras.mixed_precision.global_policy().name
    package = f"package (width 32, {policy})"
    variants = {package: (None, policy, "auto"),
                "width=16": (lambda: build_third_tuned(width=16), policy, "auto")}
    other_place = "pipeline" if augment_in_model("auto") else "model"
    variants[f"augmentation in the {'tf.data map' if other_place == 'pipeline' else 'model'}"] = \
        (None, policy, other_place)
    if gpu_names() and policy != "float32":
        variants["float32 (no mixed precision)"] = (None, "float32", "auto")
    if cpu_has_bf16() and not gpu_names():
        variants["mixed_bfloat16 (CPU)"] = (None, "mixed_bfloat16", "auto")
    return package, variants


def bench_third_tuned_variants(x, y, size, work_dir):
    """Options for the slowest model, timed in turns with the package's third_tuned:
    width 16, augmentation on the other side, and the other precision where it applies."""
    import keras

    package, variants = third_tuned_variants()
    runs, sizes = {}, {}
    for label, (build, policy, augment_on) in variants.items():
        keras.mixed_precision.set_global_policy(policy)
        model, runs[label], n_train, n_val = image_model_runner(
            "third_tuned", x, y, size, work_dir, build=build, augment_on=augment_on)
        sizes[label] = (n_train, n_val)
    keras.mixed_precision.set_global_policy(variants[package][1])
    m = interleaved(runs, size["repeats"])
    clear_keras()
    return {label: dict(training_figures("third_tuned", m[label], *sizes[label]),
                        package=label == package) for label in variants}


# ---------------------------------------------------------------------------
# 5. The whole pipeline
# ---------------------------------------------------------------------------

def notebook_names():
    from cifar100cnn.__main__ import NOTEBOOKS

    return NOTEBOOKS


def missing_notebooks():
    return [name for name in notebook_names() if not os.path.exists(os.path.join(REPO_ROOT, name))]


def timed_run(arguments, timeout):
    """Wall time of ``python -m cifar100cnn run <arguments>``, with its output, or why not."""
    command = [sys.executable, "-m", "cifar100cnn", "run", *arguments]
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(seconds=None, note=f"did not finish within {timeout} s")
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        return dict(seconds=None, note=f"failed (exit {result.returncode}): "
                                       f"{result.stderr.strip().splitlines()[-1:]}")
    return dict(seconds=seconds, note="measured", stdout=result.stdout)


def bench_cli(size, work_dir, args):
    """Wall time of ``python -m cifar100cnn run --quick`` in a scratch folder, or why not."""
    if args.skip_cli:
        return dict(seconds=None, note="skipped (--skip-cli)")
    if args.quick and not args.cli:
        return dict(seconds=None, note="skipped in --quick mode (it alone takes minutes); "
                                       "run without --quick, or add --cli")
    if not os.path.exists(os.path.join(REPO_ROOT, "cifar100cnn", "__main__.py")):
        return dict(seconds=None, note="skipped: `python -m cifar100cnn run` does not exist yet")
    missing = missing_notebooks()
    if missing:
        return dict(seconds=None, note=f"skipped: notebooks not present yet ({', '.join(missing)})")
    return timed_run(["--quick", "--data", "synthetic", "--vgg16-weights", "none",
                      "--out", os.path.join(work_dir, "cli")], size["cli_timeout"])


def bench_full_pipeline(args, work_dir):
    """Wall time of the whole default pipeline on synthetic data of full size, measured with
    ``python -m cifar100cnn run`` (only with --full-pipeline: hours on a CPU, minutes on a GPU)."""
    if not args.full_pipeline:
        return None
    arguments = ["--data", "synthetic", "--vgg16-weights", "none", "--retrain"]
    result = timed_run(arguments + ["--out", os.path.join(work_dir, "full")], args.full_timeout)
    if result["seconds"] is not None:
        # run_notebooks ends with one "<notebook>: <seconds> s" line per notebook
        result["notebooks"] = [line for line in result.pop("stdout").splitlines()
                               if line.split(":")[0] in notebook_names()]
        result["command"] = "python -m cifar100cnn run " + " ".join(arguments)
    return result


def estimate_full_pipeline(models, vgg, vgg_infer, variants=None):
    """Default epochs x measured full-size epoch times, plus VGG16 features and test inference.

    With ``variants``: the width-16 third_tuned (an option, not the default) replaces the
    package's third_tuned.
    """
    parts = []
    for m in models:
        seconds = m["epochs"] * m["epoch_s"]
        if m["name"] == "third_tuned" and variants:
            seconds = m["epochs"] * variants["width=16"]["epoch_s"]
        parts.append((f"{m['name']}: {m['epochs']} epochs", seconds))
    parts.append(("vgg16: features of 50,000 images (once)", vgg["extract_s"]))
    parts.append((f"vgg16: head, {vgg['epochs']} epochs", vgg["epochs"] * vgg["head"]["epoch_s"]))
    test_s = sum(N_TEST / m["infer_ips"] for m in models) + N_TEST / vgg_infer["infer_ips"]
    parts.append(("test-set predictions, five models", test_s))
    return parts


# ---------------------------------------------------------------------------
# 6. The compute floor: the pipeline's FLOPs at the machine's measured peak
# ---------------------------------------------------------------------------

# A training step costs about three forward passes: forward, gradients of the activations,
# gradients of the weights.
TRAINING_PASSES = 3


def peak_flops(repeats):
    """The best FLOP/s this machine reaches on large, dense work in the package's compute
    precision: a square matmul and a batch of 3x3 convolutions; median of ``repeats``."""
    import keras
    import tensorflow as tf

    dtype = keras.mixed_precision.global_policy().compute_dtype
    scale = 4 if gpu_names() else 1  # bigger work on a GPU, so launches do not dominate
    n, batch = 2048 * scale, 100 * scale ** 2
    a = tf.random.normal((n, n), dtype=dtype)
    images = tf.random.normal((batch, 32, 32, 64), dtype=dtype)
    kernel = tf.random.normal((3, 3, 64, 64), dtype=dtype)
    work = {"matmul": (tf.function(lambda: tf.matmul(a, a)), 2 * n ** 3),
            "conv": (tf.function(lambda: tf.nn.conv2d(images, kernel, 1, "SAME")),
                     2 * batch * 32 * 32 * 64 * 64 * 9)}
    rates = {}
    for name, (run, flops) in work.items():
        def ten_runs():
            for _ in range(10):
                result = run()
            return result.numpy()  # waits for the device
        rates[name] = 10 * flops / median_seconds(ten_runs, repeats)
    return dict(rates, dtype=dtype, peak=max(rates["matmul"], rates["conv"]))


def floor_parts(models, vgg, vgg_infer):
    """(stage, FLOPs) in the order of ``estimate_full_pipeline``."""
    def training(forward, epochs):
        return epochs * (N_TRAIN * TRAINING_PASSES + N_VAL) * forward

    parts = [training(m["forward_flops"], m["epochs"]) for m in models]
    parts.append((N_TRAIN + N_VAL) * (vgg_infer["forward_flops"] - vgg_infer["head_flops"]))
    parts.append(training(vgg_infer["head_flops"], vgg["epochs"]))
    parts.append(N_TEST * (sum(m["forward_flops"] for m in models) + vgg_infer["forward_flops"]))
    return parts


def floor_section(models, vgg_infer, parts, flops, peak):
    per_image = [m["forward_flops"] for m in models] + [vgg_infer["forward_flops"] - vgg_infer["head_flops"],
                                                         vgg_infer["head_flops"], None]
    rows = [[stage, f"{forward / 1e6:,.1f}" if forward else "", f"{total / 1e12:,.1f}",
             fmt_duration(total / peak["peak"]), fmt_duration(seconds), f"{total / peak['peak'] / seconds:.0%}"]
            for (stage, seconds), forward, total in zip(parts, per_image, flops)]
    floor = sum(flops) / peak["peak"]
    estimate = sum(seconds for _, seconds in parts)
    rows.append(["**Total**", "", f"**{sum(flops) / 1e12:,.0f}**", f"**{fmt_duration(floor)}**",
                 f"**{fmt_duration(estimate)}**", f"**{floor / estimate:.0%}**"])
    header = ["Stage (default epochs)", "Forward MFLOP per image", "TFLOP in all",
              "Floor at peak", "Estimate (section 5)", "Efficiency (floor / estimate)"]
    return table(header, rows)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------

def machine_description():
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = psutil.virtual_memory().total / 2 ** 30
    return f"{cpu}, {os.cpu_count()} CPU cores, {ram:.0f} GiB RAM, no GPU" \
        if not gpu_names() else f"{cpu}, {os.cpu_count()} CPU cores, {ram:.0f} GiB RAM, GPU: {', '.join(gpu_names())}"


def gpu_names():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]


def library_versions():
    import keras
    import scipy
    import tensorflow as tf

    versions = [f"Python {platform.python_version()}", f"TensorFlow {tf.__version__}",
                f"Keras {keras.__version__}", f"NumPy {np.__version__}", f"SciPy {scipy.__version__}"]
    try:
        import tf_keras
        versions.append(f"tf_keras {tf_keras.__version__} (benchmark only)")
    except ImportError:
        versions.append("tf_keras not installed (NumPy/SciPy generator used)")
    return ", ".join(versions)


def goal_cell(ratio, goal, higher_is_better=True):
    met = ratio >= goal if higher_is_better else ratio <= goal
    sign = "≥" if higher_is_better else "≤"
    return f"{sign} {goal:g}× — {'met' if met else 'NOT met'}"


def pipeline_goal_cell(seconds):
    """The issue's goals: 90 minutes on 2 CPU cores; 10 minutes on one H100."""
    if gpu_names():
        return f"≤ 10 min (one H100) — {'met' if seconds <= 600 else 'NOT met'}"
    return f"≤ 90 min (2 CPU cores) — {'met' if seconds <= 5400 else 'NOT met'}"


def summary_table(vgg, aug, memory, total, total_option, floor, peak, full):
    per_epoch = vgg["original"]["epoch_s"] / vgg["head"]["epoch_s"]
    per_epoch_before = vgg["original"]["epoch_s"] / vgg["head_before"]["epoch_s"]
    stage = vgg["original_stage_s"] / vgg["ours_stage_s"]
    aug_ratio = aug["ours_ips"] / aug["legacy_ips"]
    aug_before = aug["before_ips"] / aug["legacy_ips"]
    mem_ratio = memory["ours"]["data"] / memory["original"]["data"]
    mem_arrays = memory["ours, arrays only"]["data"] / memory["original"]["data"]
    rows = [
        ["VGG16 transfer, one epoch (40k train + 10k val)",
         fmt_duration(vgg["original"]["epoch_s"]) + " (est.)", fmt_duration(vgg["head"]["epoch_s"]),
         f"{per_epoch:,.0f}×", f"{per_epoch_before:,.0f}× (one batch per call)", goal_cell(per_epoch, 100)],
        [f"VGG16 stage, {vgg['epochs']} epochs (features once + head)",
         fmt_duration(vgg["original_stage_s"]) + " (est.)", fmt_duration(vgg["ours_stage_s"]) + " (est.)",
         f"{stage:,.0f}×", "", ""],
        ["Augmentation input pipeline (images/s)", fmt(aug["legacy_ips"]), fmt(aug["ours_ips"]),
         f"{aug_ratio:.1f}×", f"{aug_before:.1f}× (three Keras layers)", goal_cell(aug_ratio, 5)],
        ["Peak RSS added by the data (MiB)", fmt(memory["original"]["data"]), fmt(memory["ours"]["data"]),
         f"{mem_ratio:.2f}×", f"arrays alone: {mem_arrays:.2f}×",
         goal_cell(mem_ratio, 0.25, higher_is_better=False)],
        ["Full default pipeline (est.)", "", fmt_duration(total), "",
         f"{fmt_duration(total_option)} with third_tuned width 16 (option)",
         pipeline_goal_cell(total)],
        *([["Full default pipeline, measured", "", fmt_duration(full["seconds"]), "", "",
            pipeline_goal_cell(full["seconds"])]] if full and full["seconds"] else []),
        ["Floor: its FLOPs at this machine's measured peak", "", fmt_duration(floor), "",
         f"peak {peak['peak'] / 1e9:,.0f} GFLOP/s ({peak['dtype']})",
         f"90 min {'reachable' if floor <= 5400 else 'out of reach'} here even at 100% of peak"
         if not gpu_names() else ""],
    ]
    return table(["What", "Original way", "Ours (package)", "Ratio", "For reference",
                  "Goal"], rows)


def vgg16_section(vgg):
    o, e, h, hb = vgg["original"], vgg["extraction"], vgg["head"], vgg["head_before"]
    rows = [
        ["Original: train phase", f"{o['n_train']} images", fmt(o["phases"]["train"], 2),
         fmt(o["n_train"] / o["phases"]["train"]), fmt_duration(o["phases"]["train"] * N_TRAIN / o["n_train"])],
        ["Original: validation phase", f"{o['n_val']} images", fmt(o["phases"]["val"], 2),
         fmt(o["n_val"] / o["phases"]["val"]), fmt_duration(o["phases"]["val"] * N_VAL / o["n_val"])],
        ["Ours: features, `predict_in_batches` (once)", f"{e['n']} images", fmt(e["per_image"] * e["n"], 2),
         fmt(1 / e["per_image"]), fmt_duration(vgg["extract_s"]) + " for 50k"],
        ["Ours: features, `model.predict(batch_size=500)`", f"{e['n']} images",
         fmt(e["per_image_predict"] * e["n"], 2), fmt(1 / e["per_image_predict"]),
         fmt_duration(e["per_image_predict"] * (N_TRAIN + N_VAL)) + " for 50k"],
        ["Ours: head epoch on cached features (`steps_per_execution=50`)", "40,000 + 10,000 (no scaling)",
         fmt(h["epoch_s"], 2), fmt(N_TRAIN / h["phases"]["train"]), fmt_duration(h["epoch_s"])],
        ["For reference: head epoch, one batch per call", "40,000 + 10,000 (no scaling)",
         fmt(hb["epoch_s"], 2), fmt(N_TRAIN / hb["phases"]["train"]), fmt_duration(hb["epoch_s"])],
    ]
    return table(["Step", "Measured on", "Median s", "Images/s", "Full size"], rows)


def models_section(models, vgg, vgg_infer, variants):
    rows = [[m["name"], m["epochs"], f"{m['n_train']:,}", fmt(m["train_ips"]), fmt(m["phases"]["callbacks"], 2),
             fmt_duration(m["epoch_s"]), fmt(m["infer_ips"]), fmt(m["predict_ips"])] for m in models]
    head = vgg["head"]
    rows.append(["vgg16 (head on cached features)", vgg["epochs"], "40,000",
                 fmt(N_TRAIN / head["phases"]["train"]), fmt(head["phases"]["callbacks"], 2),
                 fmt_duration(head["epoch_s"]), fmt(vgg_infer["infer_ips"]), fmt(vgg_infer["predict_ips"])])
    rows += [[f"*option: third_tuned, {label}*", v["epochs"], f"{v['n_train']:,}", fmt(v["train_ips"]),
              fmt(v["phases"]["callbacks"], 2), fmt_duration(v["epoch_s"]), "", ""]
             for label, v in variants.items() if not v["package"]]
    header = ["Model", "Default epochs", "Timed on (train images)", "Train images/s", "Callbacks s/epoch",
              "Per 40k+10k epoch", "Inference img/s (`predict_in_batches`)", "Inference img/s (`model.predict`)"]
    return table(header, rows)


def full_pipeline_line(full):
    if full is None:
        return ("The whole default pipeline at full size was not run (add `--full-pipeline`; "
                "hours on a CPU).")
    if full["seconds"] is None:
        return f"The whole default pipeline at full size: {full['note']}."
    return (f"`{full['command']}` (the whole default pipeline, synthetic data of full size): "
            f"**{fmt_duration(full['seconds'])}** wall time, measured ("
            + "; ".join(full["notebooks"]) + ").")


def pipeline_section(parts, parts_fixed, cli):
    rows = [[name, fmt_duration(seconds), fmt_duration(fixed)]
            for (name, seconds), (_, fixed) in zip(parts, parts_fixed)]
    rows.append(["**Total (estimate)**", f"**{fmt_duration(sum(s for _, s in parts))}**",
                 f"**{fmt_duration(sum(s for _, s in parts_fixed))}**"])
    cli_line = ("`python -m cifar100cnn run --quick --data synthetic --vgg16-weights none`: "
                + (f"**{fmt_duration(cli['seconds'])}** wall time, measured." if cli["seconds"]
                   else cli["note"] + "."))
    header = ["Stage (default epochs, synthetic data of full size)", "Package (default recipes)",
              "With third_tuned width 16 (option)"]
    return table(header, rows) + "\n\n" + cli_line


def render(results, args, size):
    vgg, aug, memory, variants = results["vgg"], results["aug"], results["memory"], results["variants"]
    models, vgg_infer = results["models"]
    parts = estimate_full_pipeline(models, vgg, vgg_infer)
    parts_fixed = estimate_full_pipeline(models, vgg, vgg_infer, variants)
    total, total_fixed = (sum(s for _, s in p) for p in (parts, parts_fixed))
    peak, flops = results["peak"], floor_parts(models, vgg, vgg_infer)
    floor = sum(flops) / peak["peak"]
    mode = "quick" if args.quick else "full"
    return "\n\n".join([
        "# Benchmarks: the original project's way vs this package",
        "Written by `benchmarks/bench.py`; re-run it to refresh this file.",
        f"- Date: {datetime.date.today().isoformat()}\n"
        f"- Command: `{results['command']}` ({mode} mode)\n"
        f"- Machine: {machine_description()}\n"
        f"- Libraries: {library_versions()}\n"
        f"- As the package sees it: {results['hardware']}\n"
        f"- The benchmark took {fmt_duration(results['elapsed'])}.",
        "> **Data**: synthetic CIFAR-shaped images (`data.make_synthetic`), not CIFAR-100; speed "
        "and memory do not depend on pixel values. **Noise**: every timing is the median of "
        f"{size['repeats']} repeats after one warm-up; load average (1 min) "
        f"{results['load'][0]:.2f} at the start, {results['load'][1]:.2f} at the end, on "
        f"{os.cpu_count()} cores (cloud cores: neighbours can still steal time, so treat ratios "
        "as ±20%). **VGG16** runs with `weights=None` (the ImageNet weights cannot be downloaded "
        "here); the time per image is the same. **For reference** columns time what the "
        "package did before the speed fixes, in the same run.",
        "## Summary", summary_table(vgg, aug, memory, total, total_fixed, floor, peak, results["full"]),
        "## 1. VGG16 transfer learning",
        "Original way: frozen VGG16 base + head as one model, trained with `fit` on float64 "
        "`x/255` and one-hot labels (batch 100), so the base runs over every image every epoch. "
        "Ours: `vgg16_feature_extractor(base)` run once with `predict_in_batches`, then "
        "`build_vgg16_head` trained on the cached features. The original's epoch is measured "
        "on the sample shown and scaled linearly to 40,000 train + 10,000 validation images "
        "(an extrapolation); the head epoch is measured at full size. Callback time "
        "(checkpoints) is added unscaled. Stage totals: 100 × epoch (original); features of "
        "50,000 images + 100 head epochs (ours).",
        vgg16_section(vgg),
        "## 2. Augmentation input pipeline (third model, original settings)",
        f"Rotation ±40°, shifts 0.2, vertical flip, nearest fill, batches of 100, {aug['n']:,} "
        f"images per pass. Original: {aug['legacy_name']} on float `x/255`, single-threaded. "
        "Ours: `make_pipeline(..., shuffle=True, augment=build_augmentation(\"original\"))`: "
        "`models.RandomAffine` composes rotation, shifts and flip into one "
        "`keras.ops.image.affine_transform` per batch, in a parallel, prefetched `tf.data` map. "
        "For reference: the same transforms as three Keras layers (RandomRotation, RandomFlip, "
        "RandomTranslation: three resamplings), the package's way before.",
        table(["Pipeline", "Images/s"], [[aug["legacy_name"], fmt(aug["legacy_ips"])],
                                         ["Ours (tf.data + one fused affine transform)", fmt(aug["ours_ips"])],
                                         ["For reference: tf.data + three Keras layers", fmt(aug["before_ips"])]]),
        "## 3. Peak memory of preparing and holding the data",
        "Each way runs in a fresh interpreter that imports TensorFlow/Keras, then loads the "
        "50,000 + 10,000 uint8 images from `.npy`. Original: `x/255` (float64) for train, "
        "validation and test, one-hot float labels (`to_categorical`). Ours: uint8 images, "
        "int64 labels, the train/validation `tf.data` pipelines built and a first batch drawn "
        "(shuffle buffer filled); 'arrays only' stops before `make_pipeline`. The pipelines "
        "read batches from the NumPy arrays in place (`data.indexed_batches`), so they add "
        "only the index shuffle buffer and a few batches. Peak = `VmHWM`; 'added by the data' = peak − peak after the imports.",
        table(["Way", "Peak after imports (MiB)", "Peak (MiB)", "Added by the data (MiB)"],
              [[way, fmt(m["baseline"]), fmt(m["peak"]), fmt(m["data"])] for way, m in memory.items()]),
        "## 4. Training and inference throughput",
        f"Image models: the training images shown + a quarter as many validation images per "
        "measured epoch, the recipe's batch size, optimizer and augmentation, and the package's "
        "per-epoch callbacks (resume backup, best-weights checkpoint); training and validation "
        "phases scaled to 40,000 + 10,000 images, callbacks added unscaled. "
        f"Inference on {size['infer']:,} images (VGG16: {min(size['infer'], size['vgg_extract']):,}), "
        "the whole model from raw uint8 images, batches of 500.",
        models_section(models, vgg, vgg_infer, variants),
        "The third_tuned options are timed in turns with the package's third_tuned (same "
        "sample), so their ratio to it is meaningful even on a shared CPU; the model rows above "
        "are timed one model after another.",
        "## 5. The whole pipeline",
        "Estimate from the per-epoch figures above (labelled as such): each recipe's default "
        "epochs without early stopping, third_original and third_tuned both counted; the "
        "keras-tuner search and notebook start-up are not included. The last column swaps in "
        "the width-16 third_tuned option (not the default; its CIFAR-100 accuracy is not "
        "measured).",
        pipeline_section(parts, parts_fixed, results["cli"]),
        full_pipeline_line(results["full"]),
        "## 6. The compute floor: how fast this machine could possibly run the pipeline",
        "FLOPs counted from the Conv2D and Dense layers (2 × multiply-adds; the other layers "
        f"are cheap), a training image costing {TRAINING_PASSES} forward passes, each stage with "
        "its default epochs over 40,000 training + 10,000 validation images. The floor is that "
        "work at the best rate this machine reached on large dense work in the package's "
        f"precision ({peak['dtype']}): a {2048 * (4 if gpu_names() else 1)}² matmul "
        f"{peak['matmul'] / 1e9:,.0f} GFLOP/s, a batch of 3×3 convolutions "
        f"{peak['conv'] / 1e9:,.0f} GFLOP/s. No training loop can beat the floor on this "
        "machine; the efficiency column says how close the package comes (small layers, "
        "pooling, normalization and the optimizer keep it below 100%).",
        floor_section(models, vgg_infer, parts, flops, peak),
    ]) + "\n"


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small samples, under 5 minutes")
    parser.add_argument("--skip-cli", action="store_true",
                        help="do not time `python -m cifar100cnn run --quick`")
    parser.add_argument("--cli", action="store_true",
                        help="with --quick: time `python -m cifar100cnn run --quick` as well")
    parser.add_argument("--full-pipeline", action="store_true",
                        help="also run and time the whole default pipeline on synthetic data of "
                             "full size (minutes on a GPU, hours on a CPU)")
    parser.add_argument("--full-timeout", type=int, default=3 * 3600,
                        help="seconds --full-pipeline may take (default 3 h)")
    parser.add_argument("--output", default=os.path.join(REPO_ROOT, "docs", "BENCHMARKS.md"))
    parser.add_argument("--memory-worker", nargs=2, metavar=("WAY", "FOLDER"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_all(args, size, work_dir):
    from cifar100cnn.data import make_synthetic

    n = max(size["model_train"] * 5 // 4, size["aug"], size["vgg_train"] * 5 // 4)
    (x, y), _ = make_synthetic(n, 1, seed=0)
    results = {}
    for name, step in (("peak", lambda: peak_flops(size["repeats"])),
                       ("vgg", lambda: bench_vgg16(x, y, size, work_dir)),
                       ("aug", lambda: bench_augmentation(x, y, size)),
                       ("memory", lambda: bench_memory(work_dir)),
                       ("models", lambda: bench_models(x, y, size, work_dir)),
                       ("variants", lambda: bench_third_tuned_variants(x, y, size, work_dir)),
                       ("cli", lambda: bench_cli(size, work_dir, args)),
                       ("full", lambda: bench_full_pipeline(args, work_dir))):
        started = time.perf_counter()
        results[name] = step()
        print(f"[bench] {name}: {time.perf_counter() - started:.0f} s", flush=True)
    return results


def main(argv=None):
    args = parse_args(argv)
    if args.memory_worker:
        return memory_worker(*args.memory_worker)
    size = SIZES["quick" if args.quick else "full"]
    from cifar100cnn.training import configure_hardware

    _, hardware = configure_hardware()  # the package's precision policy (mixed on a GPU)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-") as work_dir:
        results = run_all(args, size, work_dir)
    results["load"] = (load_before, os.getloadavg()[0])
    results["elapsed"] = time.perf_counter() - started
    results["hardware"] = hardware
    results["command"] = "python benchmarks/bench.py" + (" --quick" if args.quick else "") \
        + (" --skip-cli" if args.skip_cli else "") + (" --cli" if args.cli else "") \
        + (" --full-pipeline" if args.full_pipeline else "")
    report = render(results, args, size)
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        handle.write(report)
    print(f"Written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
