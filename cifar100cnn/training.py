"""Training: compile, fit with best-weights checkpoints, resume and an epoch log, save; the
fast path (XLA, augmentation in the model, mixed precision) with its fallback."""

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

from . import artifacts
from .augment import augment_in_model, model_to_train, pipeline_augmentation
from .data import make_pipeline
from .hardware import precision_policy, set_seed
from .models import RECIPES
from .optimization import compile_model


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


def fit_on_images(build, data, recipe, work_dir, epochs=None, seed=0, augment_on="auto",
                  strategy=None, verbose=1, jit_compile="auto", callbacks=()):
    """Pipelines of ``data``'s images -> model built under ``strategy``, augmented where
    ``augment_on`` says -> ``fit``.

    Args:
        build: a function returning the model to train (called under ``strategy``).
        data: a ``data.Dataset``: its training and validation splits are used.
        recipe: the recipe (batch size, augmentation, optimizer, ...).
        work_dir: the folder of checkpoints and the epoch log (see ``fit``).
        epochs: default None: the recipe's.
        seed: shuffling and augmentation seed (default 0).
        augment_on: "auto" (default), "pipeline" or "model": see ``augment_in_model``.
        strategy: default None: the current strategy.
        verbose: Keras verbosity (default 1).
        jit_compile: "auto" (default), True or False: see ``use_jit``.
        callbacks: more Keras callbacks (default none).

    Returns:
        ``(model, history)``: the model ``build`` returned, without augmentation, holding
        its best validation weights.
    """
    kind = recipe["augmentation"]
    train_ds = make_pipeline(data.x_train, data.y_train, recipe["batch_size"], shuffle=True,
                             augment=pipeline_augmentation(kind, seed, augment_on), seed=seed)
    val_ds = make_pipeline(data.x_val, data.y_val, recipe["batch_size"])
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build()
        trainee = model_to_train(model, kind, seed, augment_on)
        history = fit(trainee, train_ds, val_ds, recipe, work_dir, epochs, verbose,
                      jit_compile=jit_compile, callbacks=callbacks)
    return model, history


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
            return fit_on_images(build, data, recipe, work_dir, epochs, seed, path.augment_on,
                                 strategy, verbose, path.jit_compile, callbacks=[watch])

    model, history = train_with_fallback(
        attempt, fast_path(kind, augment_on, jit_compile, strategy), name)
    finish(model, history, name, models_dir, work_dir)
    return model, history
