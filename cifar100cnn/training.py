"""Compile, fit with checkpoints and resume, save. Also device set-up, the fast path (XLA,
augmentation in the model, mixed precision) with its fallback, and VGG16 features."""

import contextlib
import dataclasses
import os
import re
import shutil
import time
import warnings

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from . import artifacts
from .optimization import SparseSmoothedCrossentropy, compile_model, make_optimizer  # noqa: F401
from .data import indexed_batches, make_pipeline
from .models import (RECIPES, assemble_vgg16, build_augmentation, build_vgg16_base,
                     build_vgg16_head, check_vgg16_input_size, vgg16_front)


def set_seed(seed=0):
    """Seed Python, NumPy and TensorFlow; make CPU kernels deterministic."""
    keras.utils.set_random_seed(seed)
    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()


PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# CPU flags (Linux /proc/cpuinfo) under which oneDNN runs bfloat16 convolutions natively:
# Intel AMX tiles or AVX-512 BF16 (Intel Cooper Lake+, AMD Zen 4+).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags (empty where the file does not exist, e.g. macOS, Windows)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_precision(gpus, flags):
    """mixed_float16 on GPUs; mixed_bfloat16 on CPUs with native bf16 (measured 1.4x-2x
    faster there, docs/BENCHMARKS.md); float32 elsewhere."""
    if gpus:
        return "mixed_float16"
    return "mixed_bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"


def configure_hardware(precision="auto", cpu_devices=1):
    """Describe the devices, set the precision policy and pick a distribution strategy.

    Args:
        precision: "auto" (default: see ``auto_precision``), "float32", "mixed_float16" or
            "mixed_bfloat16". Saved models are float32 whatever the training precision.
        cpu_devices: > 1 on a machine without GPUs splits the CPU into that many logical
            devices and mirrors over them (to test multi-device training on a CPU); it must
            be called before TensorFlow has run anything. Default 1.

    Returns:
        ``(strategy, description)``. Several GPUs -> ``MirroredStrategy``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    gpus = tf.config.list_physical_devices("GPU")
    if precision == "auto":
        precision = auto_precision(gpus, cpu_flags())
    keras.mixed_precision.set_global_policy(precision)
    if not gpus and cpu_devices > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif not gpus and cpu_devices > 1:
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.get_strategy()
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        where = f"{len(gpus)} GPU(s): {', '.join(names)}"
    else:
        bf16 = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
        where = f"CPU only ({os.cpu_count()} cores{'; ' + ', '.join(bf16) if bf16 else ''})"
    text = (f"TensorFlow {tf.__version__}, Keras {keras.__version__}; {where}; "
            f"precision {keras.mixed_precision.global_policy().name}; "
            f"strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)")
    return strategy, text


def check_epochs(epochs):
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    return int(epochs)


class EpochLog(keras.callbacks.Callback):
    """Writes the full history to JSON after every epoch, keyed by epoch number.

    After a resume (BackupAndRestore), epochs continue from the right number, so the log
    of an interrupted run ends up the same length as an uninterrupted one.
    """

    def __init__(self, path):
        super().__init__()
        self.path = path
        self.epochs = {}
        if os.path.exists(path):
            self.epochs = artifacts.load_json(path)
        self._started = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        record = {key: float(value) for key, value in (logs or {}).items()}
        record["seconds"] = time.time() - self._started
        self.epochs[str(epoch)] = record
        artifacts.save_json(self.epochs, self.path)

    def best(self, key="val_accuracy"):
        values = [record[key] for record in self.epochs.values() if key in record]
        return max(values) if values else None


class BestWeights(keras.callbacks.Callback):
    """Saves the weights each time validation accuracy beats ``best`` (the best so far).

    Unlike ``ModelCheckpoint``, it writes a temporary file and renames it into place, so a
    kill mid-write leaves the previous best weights intact.
    """

    def __init__(self, path, best=None, monitor="val_accuracy"):
        super().__init__()
        self.path, self.best, self.monitor = path, best, monitor

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or (self.best is not None and value <= self.best):
            return
        with artifacts.atomic_path(self.path) as temporary:
            self.model.save_weights(temporary)
        self.best = float(value)


def tensorboard_dir(work_dir):
    """Where TensorBoard logs of a training go: ``<output>/logs/<stage>`` for a work folder
    ``<output>/models/checkpoints/<stage>`` (git ignores ``logs/``), else ``<work_dir>/logs``."""
    work_dir = os.path.abspath(work_dir)
    checkpoints = os.path.dirname(work_dir)
    if os.path.basename(checkpoints) != "checkpoints":
        return os.path.join(work_dir, "logs")
    return os.path.join(os.path.dirname(os.path.dirname(checkpoints)), "logs", os.path.basename(work_dir))


def tensorboard(work_dir, fresh):
    """A TensorBoard callback writing per-epoch curves to ``tensorboard_dir(work_dir)``; a
    ``fresh`` start (no epoch done yet) first clears the logs of an earlier training."""
    log_dir = tensorboard_dir(work_dir)
    if fresh:
        shutil.rmtree(log_dir, ignore_errors=True)
    return keras.callbacks.TensorBoard(log_dir, write_graph=False)


def as_history(epoch_log):
    """{"0": {...}, "1": {...}} -> {"accuracy": [...], ..., "seconds": [...]} in epoch order."""
    ordered = [epoch_log[key] for key in sorted(epoch_log, key=int)]
    keys = sorted({key for record in ordered for key in record})
    return {key: [record.get(key) for record in ordered] for key in keys}


def fit(model, train_ds, val_ds, recipe, work_dir, epochs=None, verbose=1, jit_compile="auto",
        callbacks=()):
    """Compile and fit with best-weights checkpointing, resume and an epoch log.

    Re-running after an interruption resumes from the last completed epoch. Returns the
    history (dict of lists) with the best validation weights loaded into ``model``.

    Args:
        jit_compile: "auto" (default), True or False: see ``use_jit``. XLA that cannot be
            had as asked raises ``FastPathError`` before training, never silently off.
        callbacks: more Keras callbacks, called after the package's own.
    """
    epochs = check_epochs(epochs if epochs is not None else recipe["epochs"])
    os.makedirs(work_dir, exist_ok=True)
    steps = int(train_ds.cardinality())
    if steps < 1:
        raise ValueError("the training dataset is empty; expected at least one batch")
    jit = use_jit(jit_compile)
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        # Several batches per call fail under MirroredStrategy in Keras 3 ("You must feed a
        # value for placeholder tensor", keras#19246): one batch per call there.
        recipe = {**recipe, "steps_per_execution": 1}
    from . import distributed

    if distributed.multi_worker():
        model = distributed.for_multi_worker(model)
    with xla_allowed(jit):
        compile_with_xla(model, recipe, steps, epochs, jit)
        return _fit_compiled(model, train_ds, val_ds, recipe, work_dir, epochs, verbose, callbacks)


def _fit_compiled(model, train_ds, val_ds, recipe, work_dir, epochs, verbose, extra_callbacks):
    log = EpochLog(os.path.join(work_dir, "epochs.json"))
    best_weights = os.path.join(work_dir, "best.weights.h5")
    # Order matters for a hard kill between two callbacks: the backup (which decides where a
    # rerun resumes) is written last, so an epoch it marks done is already in the epoch log.
    # double_checkpoint keeps the previous backup in case the latest one is cut mid-write.
    callbacks = [
        BestWeights(best_weights, best=log.best()),
        log,
        tensorboard(work_dir, fresh=not log.epochs),
        keras.callbacks.BackupAndRestore(os.path.join(work_dir, "backup"), double_checkpoint=True),
    ]
    if recipe.get("early_stopping"):
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                       patience=recipe["early_stopping"]))
    callbacks.extend(extra_callbacks)
    # The pipeline shuffles already.
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
              shuffle=False, verbose=verbose)
    if os.path.exists(best_weights):
        model.load_weights(best_weights)
    return as_history(log.epochs)


def finish(model, history, name, models_dir, *work_dirs):
    """Save the model and its history under their final names, then clear the work folders
    (a later retrain must not resume from, or keep the best weights of, this finished run)."""
    path = artifacts.save_model(model, artifacts.model_path(name, models_dir))
    artifacts.save_json(history, artifacts.history_path(name, models_dir))
    for work_dir in work_dirs:
        for leftover in ("epochs.json", "best.weights.h5"):
            if os.path.exists(os.path.join(work_dir, leftover)):
                os.remove(os.path.join(work_dir, leftover))
    return path


def existing(name, models_dir, retrain):
    """The saved model and history when present and ``retrain`` is off, else ``None``."""
    path = artifacts.model_path(name, models_dir)
    if retrain or not os.path.exists(path):
        return None
    print(f"Reusing {path} (trained earlier); set retrain=True to train it again.")
    model = artifacts.load_model(path)
    history_file = artifacts.history_path(name, models_dir)
    history = artifacts.load_json(history_file) if os.path.exists(history_file) else {}
    return model, history


AUGMENT_PLACES = ("auto", "pipeline", "model")


def augment_in_model(augment_on="auto"):
    """Where augmentation runs: ``True`` = inside the training step, ``False`` = tf.data map.

    "auto" puts it inside the step when a GPU is present (batches travel to the GPU as
    uint8 and are transformed there, compiled with the rest of the step by XLA; the host CPU
    only gathers them) and in the parallel tf.data map on CPU-only machines (there it runs
    beside the training step instead of inside it).
    """
    if augment_on not in AUGMENT_PLACES:
        raise ValueError(f"augment_on must be one of {AUGMENT_PLACES}, got {augment_on!r}")
    if augment_on == "auto":
        return bool(tf.config.list_physical_devices("GPU"))
    return augment_on == "model"


def with_augmentation(model, augment):
    """``augment -> model`` as one model to train. It shares ``model``'s layers, so training
    it trains ``model``, which stays free of augmentation and is what gets saved."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    return keras.Model(inputs, model(augment(inputs)), name=f"{model.name}_augmented")


def pipeline_augmentation(kind, seed, augment_on):
    """The augmentation for the tf.data map; None when there is none or it runs in the model."""
    if kind is None or augment_in_model(augment_on):
        return None
    return build_augmentation(kind, seed)


def model_to_train(model, kind, seed, augment_on):
    """``model``, preceded by augmentation ``kind`` when that runs in the model (compilable
    with XLA). Call under the strategy that built ``model``."""
    if kind is None or not augment_in_model(augment_on):
        return model
    return with_augmentation(model, build_augmentation(kind, seed, xla=True))


# ---------------------------------------------------------------------------
# The fast path (XLA, augmentation in the model, mixed precision) and its fallback
# ---------------------------------------------------------------------------

class FastPathWarning(RuntimeWarning):
    """The fast path failed before its first step; training went on with part of it off."""


class FastPathError(RuntimeError):
    """The fast path cannot run as asked (e.g. XLA asked for a layer that has no XLA kernel)."""


def use_jit(jit_compile="auto", strategy=None):
    """Whether the training step is compiled with XLA: ``True`` or ``False`` as given, and
    for "auto": on a GPU with one replica.

    Keras' own "auto" is decided inside Keras and can leave XLA off without a word
    (tf-keras#418); this one is decided here and reaches ``compile`` as True or False. It
    is off with several replicas: XLA under ``MirroredStrategy`` breaks mixed_float16's loss
    scaling (keras#21366) and, on logical CPU devices, reads variables across devices.

    Args:
        jit_compile: "auto" (default), True or False.
        strategy: the strategy the model trains under (default: the current one).
    """
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(f"jit_compile must be 'auto', True or False, got {jit_compile!r}")
    if jit_compile != "auto":
        return jit_compile
    strategy = strategy or tf.distribute.get_strategy()
    return bool(tf.config.list_physical_devices("GPU")) and strategy.num_replicas_in_sync == 1


def layers_without_xla(model):
    """Names of the layers of ``model`` (nested models included) that XLA cannot compile."""
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names += layers_without_xla(layer)
        elif not layer.supports_jit:
            names.append(layer.name)
    return names


@contextlib.contextmanager
def xla_allowed(jit_compile):
    """Inside the block, op determinism (which ``set_seed`` turns on for CPUs) is off when
    ``jit_compile``: Keras silently drops XLA under it. Restored after the block."""
    from tensorflow.python.framework import config as tf_config  # the flag Keras itself reads

    turn_off = jit_compile and tf_config.is_op_determinism_enabled()
    if turn_off:
        tf_config.disable_op_determinism()
    try:
        yield
    finally:
        if turn_off:
            tf_config.enable_op_determinism()


def compile_with_xla(model, recipe, steps_per_epoch, epochs, jit_compile):
    """``compile_model`` with ``jit_compile`` True or False, honoured or ``FastPathError``."""
    if jit_compile and layers_without_xla(model):
        raise FastPathError(f"XLA was asked for, but layer(s) {layers_without_xla(model)} of "
                            f"{model.name!r} have no XLA kernel (supports_jit=False)")
    compile_model(model, recipe, steps_per_epoch, epochs, jit_compile=bool(jit_compile))
    if model.jit_compile != bool(jit_compile):
        raise FastPathError(f"Keras set jit_compile={model.jit_compile} on {model.name!r} "
                            f"although {bool(jit_compile)} was asked for")
    return model


@dataclasses.dataclass(frozen=True)
class TrainingPath:
    """How a model trains: XLA or not, augmentation in the model or in tf.data, precision."""

    jit_compile: bool
    augment_on: str  # "model" or "pipeline"
    precision: str  # a Keras dtype policy name

    def fast_parts(self):
        """What this path turns on beyond the plain one, in words."""
        parts = ["XLA (jit_compile)"] if self.jit_compile else []
        if self.augment_on == "model":
            parts.append("augmentation inside the model")
        if self.precision != "float32":
            parts.append(f"mixed precision ({self.precision})")
        return parts


PLAIN_PATH = TrainingPath(jit_compile=False, augment_on="pipeline", precision="float32")


def fast_path(kind, augment_on="auto", jit_compile="auto", strategy=None):
    """The path asked for: XLA per ``use_jit``, augmentation ``kind`` per ``augment_in_model``
    (None: no augmentation), the global precision policy (``configure_hardware`` sets it)."""
    in_model = kind is not None and augment_in_model(augment_on)
    return TrainingPath(use_jit(jit_compile, strategy), "model" if in_model else "pipeline",
                        keras.mixed_precision.global_policy().name)


def fallback_paths(path):
    """``path``, then ``path`` without XLA (which avoids every known failure above and keeps
    mixed precision), then ``PLAIN_PATH``; each only where it differs from the one before."""
    paths = [path]
    for candidate in (dataclasses.replace(path, jit_compile=False), PLAIN_PATH):
        if candidate != paths[-1]:
            paths.append(candidate)
    return paths


@contextlib.contextmanager
def precision_policy(name):
    """The global dtype policy is ``name`` inside the block and what it was after it."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class StepWatch(keras.callbacks.Callback):
    """Counts the training steps done: a failure before the first one is a start-up failure."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


def startup_failure(error):
    """Whether ``error`` looks like a fast path that cannot compile or run (an XLA compile
    error, an op without a kernel, a distribution error), not out-of-memory or a bad input."""
    if isinstance(error, tf.errors.ResourceExhaustedError):
        return False
    return isinstance(error, (tf.errors.OpError, RuntimeError, NotImplementedError, TypeError))


_PREAMBLE = re.compile(r"Graph execution error|Detected at node|<stack traces unavailable>|"
                       r"The op is created at|File |\[\[|\d+ root error")


def error_summary(error, width=200):
    """``error`` in one short line: its type and the first line of its message that is not
    TensorFlow's preamble or a stack frame, without the compiled graph's long name."""
    lines = [re.sub(r"^\(\d+\) ", "", line.strip()) for line in str(error).splitlines()]
    lines = [line for line in lines if line and not _PREAMBLE.match(line)]
    text = re.sub(r"__inference_\S*|\(defined @ [^)]*\)", "", lines[0] if lines else "")
    text = " ".join(text.split())
    text = f"{type(error).__name__}: {text}".rstrip(": ")
    return text if len(text) <= width else text[:width - 3] + "..."


def train_with_fallback(attempt, path, name):
    """``attempt(path, watch)``, falling back along ``fallback_paths(path)`` when it fails
    before its first training step with a ``startup_failure``.

    Args:
        attempt: builds, compiles and trains on a ``TrainingPath``; gives ``watch`` (a
            ``StepWatch``) to ``fit`` and returns what the caller needs.
        path: the ``TrainingPath`` asked for.
        name: the model's name, for the warning.

    Each fallback issues one ``FastPathWarning`` of one line that says what was turned off.
    Failures after the first step, and failures of the last path, are raised as they are.
    """
    paths = fallback_paths(path)
    for current, following in zip(paths, paths[1:] + [None]):
        watch = StepWatch()
        try:
            return attempt(current, watch)
        except Exception as error:
            if following is None or watch.steps or not startup_failure(error):
                raise
            off = [part for part in current.fast_parts() if part not in following.fast_parts()]
            warnings.warn(f"{name}: the fast path failed before its first step "
                          f"({error_summary(error)}); training again with {' and '.join(off)} "
                          "turned off.", FastPathWarning, stacklevel=3)


def train_image_model(name, build, data, recipe_name, models_dir="models", epochs=None,
                      retrain=False, seed=0, strategy=None, verbose=1, recipe_overrides=None,
                      augment_on="auto", jit_compile="auto"):
    """Build (under ``strategy``), train on ``data`` and save the model called ``name``.

    ``build`` is a function returning a fresh model; ``recipe_overrides`` replaces entries
    of ``RECIPES[recipe_name]``; ``augment_on`` ("auto", "pipeline" or "model") says where
    augmentation runs (see ``augment_in_model``); ``jit_compile`` ("auto", True or False)
    whether XLA compiles the training step (see ``use_jit``). Should this fast path (with
    the precision policy of ``configure_hardware``) fail before its first step, training
    starts again without XLA, then on the plain path (float32, augmentation in tf.data),
    with a one-line ``FastPathWarning`` each time. The saved model is float32 either way.
    Returns ``(model, history)``; an existing saved model is reused unless ``retrain``.
    """
    if recipe_name not in RECIPES:
        raise ValueError(f"unknown recipe {recipe_name!r}; expected one of {list(RECIPES)}")
    augment_in_model(augment_on)  # refuse bad values before any work
    use_jit(jit_compile)
    found = existing(name, models_dir, retrain)
    if found:
        return found
    recipe = {**RECIPES[recipe_name], **(recipe_overrides or {})}
    epochs = check_epochs(epochs if epochs is not None else recipe["epochs"])
    strategy = strategy or tf.distribute.get_strategy()
    kind = recipe["augmentation"]
    work_dir = os.path.join(models_dir, "checkpoints", name)

    def attempt(path, watch):
        set_seed(seed)
        with precision_policy(path.precision):
            train_ds = make_pipeline(data.x_train, data.y_train, recipe["batch_size"], shuffle=True,
                                     augment=pipeline_augmentation(kind, seed, path.augment_on),
                                     seed=seed)
            val_ds = make_pipeline(data.x_val, data.y_val, recipe["batch_size"])
            with strategy.scope():
                model = build()
                trainee = model_to_train(model, kind, seed, path.augment_on)
                history = fit(trainee, train_ds, val_ds, recipe, work_dir, epochs, verbose,
                              jit_compile=path.jit_compile, callbacks=[watch])
        return model, history

    model, history = train_with_fallback(
        attempt, fast_path(kind, augment_on, jit_compile, strategy), name)
    finish(model, history, name, models_dir, work_dir)
    return model, history


# ---------------------------------------------------------------------------
# VGG16: features once, then the head
# ---------------------------------------------------------------------------

def predict_in_batches(model, x, batch_size=500, description="predict"):
    """``model(x)`` batch by batch with a progress bar; halves the batch on GPU out-of-memory."""
    outputs, start = [], 0
    with tqdm(total=len(x), desc=description, unit="img") as bar:
        while start < len(x):
            batch = x[start:start + batch_size]
            try:
                outputs.append(np.asarray(model(batch, training=False), dtype=np.float32))
            except tf.errors.ResourceExhaustedError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                print(f"Out of memory; retrying with batches of {batch_size}.")
                continue
            start += len(batch)
            bar.update(len(batch))
    return np.concatenate(outputs)


def vgg16_feature_extractor(base):
    """Raw 32x32 images -> the frozen base's features (upscaled first if the base is larger)."""
    inputs = keras.Input(shape=(32, 32, 3))
    return keras.Model(inputs, base(vgg16_front(inputs, base.input_shape[1]), training=False),
                       name="vgg16_features")


def train_vgg16(data, weights="imagenet", models_dir="models", epochs=None, retrain=False,
                seed=0, finetune=False, finetune_epochs=None, strategy=None, verbose=1,
                augment_on="auto", input_size=None):
    """Frozen VGG16 base run once over train/validation images, head trained on the features,
    then base + head assembled into one model from raw images and saved.

    ``input_size`` (default: the recipe's 32) upscales the images inside the model; the
    cached features then take 50,000 x (input_size / 32)^2 x 2 KiB of memory."""
    recipe = RECIPES["vgg16"]
    input_size = check_vgg16_input_size(recipe["input_size"] if input_size is None else input_size)
    found = existing("vgg16", models_dir, retrain)
    if found:
        nested = {layer.name: layer for layer in found[0].layers}
        saved_size = nested["vgg16"].input_shape[1] if "vgg16" in nested else input_size
        if saved_size != input_size:
            print(f"Note: the saved VGG16 model sees {saved_size}x{saved_size} inputs, not "
                  f"{input_size}x{input_size}; set retrain=True to train it at the new size.")
        return found
    epochs = check_epochs(epochs if epochs is not None else recipe["epochs"])
    set_seed(seed)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        base = build_vgg16_base(weights, input_size)
        extractor = vgg16_feature_extractor(base)
    train_features = predict_in_batches(extractor, data.x_train, description="VGG16 features (train)")
    val_features = predict_in_batches(extractor, data.x_val, description="VGG16 features (validation)")
    train_ds = feature_pipeline(train_features, data.y_train, recipe["batch_size"], shuffle=True, seed=seed)
    val_ds = feature_pipeline(val_features, data.y_val, recipe["batch_size"])
    work_dir = vgg16_checkpoints(models_dir, "vgg16", input_size)

    def attempt(path, watch):
        with precision_policy(path.precision), strategy.scope():
            head = build_vgg16_head(train_features.shape[1:])
            return head, fit(head, train_ds, val_ds, recipe, work_dir, epochs, verbose,
                             jit_compile=path.jit_compile, callbacks=[watch])

    head, history = train_with_fallback(attempt, fast_path(None, strategy=strategy), "vgg16")
    with strategy.scope():
        model = assemble_vgg16(base, head)
        if finetune:
            history = finetune_vgg16(model, data, history, models_dir, seed, verbose,
                                     finetune_epochs, augment_on)
    finish(model, history, "vgg16", models_dir, work_dir,
           vgg16_checkpoints(models_dir, "vgg16_finetune", input_size))
    return model, history


def vgg16_checkpoints(models_dir, stage, input_size):
    # Another input size gives other weight shapes: its checkpoints are kept apart.
    suffix = "" if input_size == 32 else f"_{input_size}px"
    return os.path.join(models_dir, "checkpoints", stage + suffix)


def feature_pipeline(features, labels, batch_size, shuffle=False, seed=0):
    return indexed_batches([features, labels], batch_size, shuffle, seed).prefetch(tf.data.AUTOTUNE)


def finetune_vgg16(model, data, history, models_dir="models", seed=0, verbose=1, epochs=None,
                   augment_on="auto"):
    """Unfreeze block 5 and train the whole model from images at a low learning rate.

    Call under the strategy that built ``model``."""
    from .models import unfreeze_block5

    recipe = RECIPES["vgg16_finetune"]
    unfreeze_block5(model)

    kind = recipe["augmentation"]
    train_ds = make_pipeline(data.x_train, data.y_train, recipe["batch_size"], shuffle=True,
                             augment=pipeline_augmentation(kind, seed, augment_on), seed=seed)
    trainee = model_to_train(model, kind, seed, augment_on)
    val_ds = make_pipeline(data.x_val, data.y_val, recipe["batch_size"])
    work_dir = vgg16_checkpoints(models_dir, "vgg16_finetune",
                                 model.get_layer("vgg16").input_shape[1])
    tuned = fit(trainee, train_ds, val_ds, recipe, work_dir, epochs or recipe["epochs"], verbose)
    return {key: history.get(key, []) + tuned.get(key, []) for key in set(history) | set(tuned)}
