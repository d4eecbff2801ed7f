"""The benchmark's measurements: the original project's way and the package's, timed on
samples of synthetic CIFAR-shaped data, with the machine they ran on.

Every timing is a median over ``repeats`` runs after one warm-up; runs that are compared
take turns (A B A B ...) so that a shared CPU loads them alike. The figures are raw: images,
seconds and FLOPs as measured; ``bench_estimate`` scales them to the full split.

Run as a script (``python bench_measure.py WAY FOLDER``) it is the fresh interpreter that
measures the peak memory of one way of holding the data.
"""

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
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

from bench_estimate import N_TEST, N_TRAIN, N_VAL  # noqa: E402

warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset")

# Images timed per measurement; repeats are taken after one warm-up.
SIZES = {
    "quick": dict(vgg_train=200, vgg_extract=500, aug=2_000, model_train=1_000, infer=1_000,
                  repeats=3, cli_timeout=600),
    "full": dict(vgg_train=1_000, vgg_extract=2_000, aug=6_000, model_train=4_000, infer=4_000,
                 repeats=5, cli_timeout=1_800),
}
# Models that are timed on a smaller sample (divide by this), to keep the run short.
HEAVY = {"third_tuned": 4}


def image_models():
    """The image models the full pipeline trains, by recipe name (recipes in recipes.RECIPES)."""
    from cifar100cnn import models

    return {"baseline": models.build_baseline, "overfit": models.build_overfit,
            "third_original": models.build_third_original, "third_tuned": models.build_third_tuned}


# ---------------------------------------------------------------------------
# Timing
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


def clear_keras():
    """Free the models built so far, keeping the precision policy (clear_session resets it)."""
    import keras

    policy = keras.mixed_precision.global_policy()
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy(policy)


def phase_timers():
    """Two callbacks: put the first before and the second after all others in ``fit``.
    Together they time each epoch's training, validation and callback phases."""
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
    from cifar100cnn.transfer import build_vgg16_base, build_vgg16_head

    n_train, n_val = size["vgg_train"], size["vgg_train"] // 4
    x_float = x[:n_train + n_val] / 255.0  # float64, as the original held it
    labels = one_hot(y[:n_train + n_val])
    base = build_vgg16_base(weights=None)
    model = original_vgg16_model(base, build_vgg16_head(base.output_shape[1:]))
    return epoch_runner(model, work_dir, x=x_float[:n_train], y=labels[:n_train], batch_size=100,
                        validation_data=(x_float[n_train:], labels[n_train:]))


def head_runner(features, y, work_dir, steps_per_execution=None):
    """One head epoch on cached features at full size (40,000 / 10,000): no scaling."""
    from cifar100cnn.optimization import compile_model
    from cifar100cnn.recipes import RECIPES
    from cifar100cnn.transfer import build_vgg16_head, feature_pipeline

    recipe = RECIPES["vgg16"]
    train = np.resize(features, (N_TRAIN,) + features.shape[1:])
    val = np.resize(features, (N_VAL,) + features.shape[1:])
    train_ds = feature_pipeline(train, np.resize(y, N_TRAIN), recipe.batch_size, shuffle=True)
    val_ds = feature_pipeline(val, np.resize(y, N_VAL), recipe.batch_size)
    head = build_vgg16_head(features.shape[1:])
    compile_model(head, recipe, int(train_ds.cardinality()))
    if steps_per_execution is not None:  # the package's recipe sets its own
        head.steps_per_execution = steps_per_execution
    return epoch_runner(head, work_dir, x=train_ds, validation_data=val_ds)


def extraction_runners(x, n):
    """The one-time feature pass: the package's predict_in_batches, and Keras' predict."""
    from cifar100cnn.inference import predict_in_batches
    from cifar100cnn.transfer import build_vgg16_base, vgg16_feature_extractor

    extractor = vgg16_feature_extractor(build_vgg16_base(weights=None))
    features = predict_in_batches(extractor, x[:n])
    return features, {
        "extract": lambda: wall_seconds(lambda: predict_in_batches(extractor, x[:n])),
        "extract_predict": lambda: wall_seconds(
            lambda: extractor.predict(x[:n], batch_size=500, verbose=0)),
    }


def measure_vgg16(x, y, size, work_dir):
    """Phase seconds of one original epoch (on a sample) and of one head epoch (full size,
    with the recipe's steps_per_execution and with one batch per call), and the seconds of
    the feature pass over ``vgg_extract`` images."""
    from cifar100cnn.recipes import RECIPES

    features, runs = extraction_runners(x, size["vgg_extract"])
    runs["original"] = original_vgg16_runner(x, y, size, os.path.join(work_dir, "vgg_original"))
    runs["head"] = head_runner(features, y, os.path.join(work_dir, "vgg_head"))
    runs["head_before"] = head_runner(features, y, os.path.join(work_dir, "vgg_head"), 1)
    m = interleaved(runs, size["repeats"])
    clear_keras()
    return dict(m, n_train=size["vgg_train"], n_val=size["vgg_train"] // 4,
                n_extract=size["vgg_extract"], epochs=RECIPES["vgg16"].epochs)


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
    """For reference: the same transforms as three Keras random layers (three resamplings)."""
    import keras

    return keras.Sequential([keras.layers.RandomRotation(40 / 360, fill_mode="nearest"),
                             keras.layers.RandomFlip("vertical"),
                             keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest")])


def measure_augmentation(x, y, size):
    """Images/s of one pass of augmented batches: the legacy generator, the package's tf.data
    pipeline, and the same pipeline with three Keras layers."""
    from cifar100cnn.augment import build_augmentation
    from cifar100cnn.tf_pipeline import make_pipeline

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
# 3. Peak memory of preparing and holding the data (fresh interpreter each way)
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
    from cifar100cnn.data import split_train_val
    from cifar100cnn.tf_pipeline import make_pipeline

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
    command = [sys.executable, os.path.abspath(__file__), way, folder]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RSS "))
    baseline, peak = (float(value) for value in line.split()[1:3])
    return dict(baseline=baseline, peak=peak, data=peak - baseline)


def measure_memory(work_dir):
    """Per way of holding the full data: peak RSS after the imports, peak RSS, and the
    difference (MiB)."""
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
    from cifar100cnn.augment import model_to_train, pipeline_augmentation
    from cifar100cnn.tf_pipeline import make_pipeline
    from cifar100cnn.optimization import compile_model
    from cifar100cnn.recipes import RECIPES

    recipe = RECIPES[name]
    n_train = size["model_train"] // HEAVY.get(name, 1)
    n_val = n_train // 4
    val_ds = make_pipeline(x[n_train:n_train + n_val], y[n_train:n_train + n_val],
                           recipe.batch_size)
    train_ds = make_pipeline(x[:n_train], y[:n_train], recipe.batch_size, shuffle=True,
                             augment=pipeline_augmentation(recipe.augmentation, 0, augment_on))
    model = (build or image_models()[name])()
    trainee = model_to_train(model, recipe.augmentation, 0, augment_on)
    compile_model(trainee, recipe, int(train_ds.cardinality()))
    runner = epoch_runner(trainee, os.path.join(work_dir, name), x=train_ds, validation_data=val_ds)
    return model, runner, n_train, n_val


def training_sample(name, phases, n_train, n_val):
    from cifar100cnn.recipes import RECIPES

    return dict(name=name, epochs=RECIPES[name].epochs, phases=phases, n_train=n_train,
                n_val=n_val)


def measure_image_model(name, x, y, size, work_dir):
    from cifar100cnn.models import forward_flops

    model, runner, n_train, n_val = image_model_runner(name, x, y, size, work_dir)
    phases = interleaved({name: runner}, size["repeats"])[name]
    figures = dict(training_sample(name, phases, n_train, n_val), **measure_inference(model, x, size),
                   forward_flops=forward_flops(model))
    clear_keras()
    return figures


def measure_inference(model, x, size):
    """Images/s of the package's predict_in_batches and of Keras' compiled predict."""
    from cifar100cnn.inference import predict_in_batches

    n = size["infer"]
    package_s = median_seconds(lambda: predict_in_batches(model, x[:n]), size["repeats"])
    keras_s = median_seconds(lambda: model.predict(x[:n], batch_size=500, verbose=0),
                             size["repeats"])
    return dict(infer_ips=n / package_s, predict_ips=n / keras_s)


def measure_vgg16_inference(x, size):
    from cifar100cnn.models import forward_flops
    from cifar100cnn.transfer import build_vgg16

    model = build_vgg16(weights=None)
    small = dict(size, infer=min(size["infer"], size["vgg_extract"]),
                 repeats=max(1, size["repeats"] - 2))
    result = dict(measure_inference(model, x, small), forward_flops=forward_flops(model),
                  head_flops=forward_flops(model.get_layer("vgg16_head")))
    clear_keras()
    return result


def third_tuned_variants():
    """label -> (build, precision policy, augment_on) for the package's third_tuned and the
    options timed against it, and the labels of the package's and of the narrower option.
    The package: its model, the policy ``hardware.set_up_hardware`` picks, augmentation where "auto"
    puts it."""
    import keras
    from cifar100cnn.augment import augment_in_model
    from cifar100cnn.models import build_third_tuned
    from cifar100cnn.recipes import RECIPES

    policy = keras.mixed_precision.global_policy().name
    package = f"package ({policy})"
    narrow_widths = tuple(width // 2 for width in RECIPES["third_tuned"].widths)
    narrow = f"widths={narrow_widths}"
    variants = {package: (None, policy, "auto"),
                narrow: (lambda: build_third_tuned(widths=narrow_widths), policy, "auto")}
    other_place = "pipeline" if augment_in_model("auto") else "model"
    variants[f"augmentation in the {'tf.data map' if other_place == 'pipeline' else 'model'}"] = \
        (None, policy, other_place)
    if policy != "float32":
        variants["float32 (no mixed precision)"] = (None, "float32", "auto")
    return variants, package, narrow


def measure_third_tuned_variants(x, y, size, work_dir):
    """Options for the slowest model, timed in turns with the package's third_tuned:
    half the width, augmentation on the other side, and float32 where the package mixes."""
    import keras

    variants, package, narrow = third_tuned_variants()
    runs, sizes = {}, {}
    for label, (build, policy, augment_on) in variants.items():
        keras.mixed_precision.set_global_policy(policy)
        model, runs[label], n_train, n_val = image_model_runner(
            "third_tuned", x, y, size, work_dir, build=build, augment_on=augment_on)
        sizes[label] = (n_train, n_val)
    keras.mixed_precision.set_global_policy(variants[package][1])
    m = interleaved(runs, size["repeats"])
    clear_keras()
    return {label: dict(training_sample("third_tuned", m[label], *sizes[label]),
                        package=label == package, narrow=label == narrow) for label in variants}


# ---------------------------------------------------------------------------
# 5. The whole pipeline through the CLI
# ---------------------------------------------------------------------------

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


def measure_cli(size, work_dir, skipped):
    """Wall time of ``python -m cifar100cnn run --quick`` in a scratch folder, or ``skipped``
    (why it was not run)."""
    if skipped:
        return dict(seconds=None, note=skipped)
    return timed_run(["--quick", "--data", "synthetic", "--vgg16-weights", "none",
                      "--out", os.path.join(work_dir, "cli")], size["cli_timeout"])


def measure_full_pipeline(work_dir, timeout):
    """Wall time of the whole default pipeline on synthetic data of full size, measured with
    ``python -m cifar100cnn run`` (hours on a CPU, minutes on a GPU)."""
    from cifar100cnn.__main__ import NOTEBOOKS

    arguments = ["--data", "synthetic", "--vgg16-weights", "none", "--retrain"]
    result = timed_run(arguments + ["--out", os.path.join(work_dir, "full")], timeout)
    if result["seconds"] is not None:
        # run_notebooks ends with one "<notebook>: <seconds> s" line per notebook
        result["notebooks"] = [line for line in result.pop("stdout").splitlines()
                               if line.split(":")[0] in NOTEBOOKS]
        result["command"] = "python -m cifar100cnn run " + " ".join(arguments)
    return result


# ---------------------------------------------------------------------------
# 6. This machine's peak FLOP/s on large dense work
# ---------------------------------------------------------------------------

def peak_flops(repeats, gpus):
    """The best FLOP/s this machine reaches on large, dense work in the package's compute
    precision: a square matmul and a batch of 3x3 convolutions; median of ``repeats``."""
    import keras
    import tensorflow as tf

    dtype = keras.mixed_precision.global_policy().compute_dtype
    scale = 4 if gpus else 1  # bigger work on a GPU, so launches do not dominate
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
    return dict(rates, dtype=dtype, matmul_n=n)


# ---------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------

def gpu_names():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]


def machine_description(gpus):
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = psutil.virtual_memory().total / 2 ** 30
    return f"{cpu}, {os.cpu_count()} CPU cores, {ram:.0f} GiB RAM, " + \
        (f"GPU: {', '.join(gpus)}" if gpus else "no GPU")


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


# ---------------------------------------------------------------------------
# Everything
# ---------------------------------------------------------------------------

def measure_all(mode, command, cli_skipped=None, full_timeout=None):
    """Every measurement of the report, with the machine and the run's conditions.

    Args:
        mode: "quick" or "full", the sample sizes of ``SIZES``.
        command: the command line, for the report.
        cli_skipped: why the quick CLI run is not timed (default None: it is timed).
        full_timeout: seconds the whole default pipeline may take; None (default) does not
            run it.

    Returns:
        A dict of plain numbers and strings, as ``bench_report.render`` takes it.
    """
    import keras

    from cifar100cnn.data import make_synthetic
    from cifar100cnn.hardware import set_up_hardware

    size = SIZES[mode]
    setup = set_up_hardware()
    # The package's precision (mixed on a GPU), as the global policy the models here are built under.
    keras.mixed_precision.set_global_policy(setup.precision)
    hardware = setup.description
    gpus = gpu_names()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    n = max(size["model_train"] * 5 // 4, size["aug"], size["vgg_train"] * 5 // 4)
    (x, y), _ = make_synthetic(n, 1, seed=0)
    steps = (("peak", lambda work_dir: peak_flops(size["repeats"], gpus)),
             ("vgg", lambda work_dir: measure_vgg16(x, y, size, work_dir)),
             ("aug", lambda work_dir: measure_augmentation(x, y, size)),
             ("memory", measure_memory),
             ("models", lambda work_dir: [measure_image_model(name, x, y, size, work_dir)
                                          for name in image_models()]),
             ("vgg_infer", lambda work_dir: measure_vgg16_inference(x, size)),
             ("variants", lambda work_dir: measure_third_tuned_variants(x, y, size, work_dir)),
             ("cli", lambda work_dir: measure_cli(size, work_dir, cli_skipped)),
             ("full", lambda work_dir: None if full_timeout is None
              else measure_full_pipeline(work_dir, full_timeout)))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as work_dir:
        for name, step in steps:
            step_started = time.perf_counter()
            results[name] = step(work_dir)
            print(f"[bench] {name}: {time.perf_counter() - step_started:.0f} s", flush=True)
    results["context"] = dict(
        date=datetime.date.today().isoformat(), command=command, mode=mode,
        machine=machine_description(gpus), libraries=library_versions(), hardware=hardware,
        gpus=gpus, cores=os.cpu_count(), repeats=size["repeats"], infer=size["infer"],
        vgg_infer=min(size["infer"], size["vgg_extract"]),
        load=(load_before, os.getloadavg()[0]), elapsed=time.perf_counter() - started)
    return results


if __name__ == "__main__":
    memory_worker(*sys.argv[1:3])
