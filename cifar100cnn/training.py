"""Training: compile, fit with best-weights checkpoints, resume and an epoch log, save; the
fast path (XLA, augmentation in the model, mixed precision) with its fallback."""

import contextlib
import dataclasses
import importlib.util
import os
import re
import shutil
import time
import warnings

import keras

from . import artifacts
from .augment import (AlternatingFlips, augment_in_model, corruption_callbacks, model_to_train,
                      pipeline_augmentation)
from .hardware import (TF_ONLY, backend, current_strategy, gpu_names, out_of_memory, precision_policy,
                       replicas, resolve_precision, set_seed, set_up_hardware, tf_runtime)
from .inputs import batch_count, make_batches
from .optimization import compile_model
from .recipes import Recipe


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
        """The best value of ``key`` (default "val_accuracy") so far; None before any."""
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
    """Where TensorBoard logs of a training go.

    Args:
        work_dir: the training's work folder.

    Returns:
        ``<output>/logs/<stage>`` for a work folder ``<output>/models/checkpoints/<stage>``
        (git ignores ``logs/``), else ``<work_dir>/logs``.
    """
    work_dir = os.path.abspath(work_dir)
    checkpoints = os.path.dirname(work_dir)
    if os.path.basename(checkpoints) != "checkpoints":
        return os.path.join(work_dir, "logs")
    return os.path.join(os.path.dirname(os.path.dirname(checkpoints)), "logs", os.path.basename(work_dir))


def tensorboard(work_dir, fresh):
    """A TensorBoard callback writing per-epoch curves to ``tensorboard_dir(work_dir)``.

    Args:
        work_dir: the training's work folder.
        fresh: whether no epoch is done yet: then the logs of an earlier training are cleared.

    Returns:
        A ``keras.callbacks.TensorBoard``; None where TensorFlow is not installed (Keras writes
        the logs with ``tf.summary``), after a one-line note.
    """
    if importlib.util.find_spec("tensorflow") is None:
        print("No TensorBoard logs: Keras writes them with TensorFlow, which is not installed.")
        return None
    log_dir = tensorboard_dir(work_dir)
    if fresh:
        shutil.rmtree(log_dir, ignore_errors=True)
    return keras.callbacks.TensorBoard(log_dir, write_graph=False)


def as_history(epoch_log):
    """An epoch log as a Keras-style history.

    Args:
        epoch_log: ``{"0": {...}, "1": {...}}``, as ``EpochLog`` writes it.

    Returns:
        ``{"accuracy": [...], ..., "seconds": [...]}`` in epoch order (None where an epoch
        lacks a key).
    """
    ordered = [epoch_log[key] for key in sorted(epoch_log, key=int)]
    keys = sorted({key for record in ordered for key in record})
    return {key: [record.get(key) for record in ordered] for key in keys}


def fit(model, train_ds, val_ds, recipe, work_dir, verbose=1, jit_compile="auto", callbacks=()):
    """Compile and fit with best-weights checkpointing, resume and an epoch log.

    Re-running after an interruption resumes from the last completed epoch.

    Args:
        model: the Keras model to train.
        train_ds: the training batches (``inputs.make_batches``: a ``tf.data.Dataset`` or a
            ``PyDataset``), shuffled already.
        val_ds: the validation batches.
        recipe: a ``recipes.Recipe``: epochs, optimizer, early stopping, ...
        work_dir: the folder of the checkpoints, the epoch log and the resume backup.
        verbose: Keras verbosity (default 1).
        jit_compile: "auto" (default), True or False: see ``use_jit``. XLA that cannot be
            had as asked raises ``FastPathError`` before training, never silently off.
        callbacks: more Keras callbacks, called after the package's own (default none).

    Returns:
        The history (dict of lists), with the best validation weights loaded into ``model``.
    """
    os.makedirs(work_dir, exist_ok=True)
    steps = batch_count(train_ds)
    if steps < 1:
        raise ValueError("the training dataset is empty; expected at least one batch")
    jit = use_jit(jit_compile)
    on_tensorflow = backend() == "tensorflow"
    if on_tensorflow and replicas(current_strategy()) > 1:
        # Several batches per call fail under MirroredStrategy in Keras 3 ("You must feed a
        # value for placeholder tensor", keras#19246): one batch per call there.
        recipe = dataclasses.replace(recipe, steps_per_execution=1)
    if on_tensorflow and tf_runtime().multi_worker():
        model = tf_runtime().for_multi_worker(model)
    with xla_allowed(jit):
        compile_with_xla(model, recipe, steps, jit)
        return _fit_compiled(model, train_ds, val_ds, recipe, work_dir, verbose, callbacks)


def _fit_compiled(model, train_ds, val_ds, recipe, work_dir, verbose, extra_callbacks):
    log = EpochLog(os.path.join(work_dir, "epochs.json"))
    best_weights = os.path.join(work_dir, "best.weights.h5")
    # Order matters for a hard kill between two callbacks: the backup (which decides where a
    # rerun resumes) is written last, so an epoch it marks done is already in the epoch log.
    # double_checkpoint keeps the previous backup in case the latest one is cut mid-write.
    callbacks = [
        BestWeights(best_weights, best=log.best()),
        log,
        tensorboard(work_dir, fresh=not log.epochs),
        EpochBackup(os.path.join(work_dir, "backup"), double_checkpoint=True),
    ]
    callbacks = [callback for callback in callbacks if callback is not None]
    if recipe.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                                       patience=recipe.early_stopping))
    callbacks.extend(extra_callbacks)
    # The pipeline shuffles already.
    model.fit(train_ds, validation_data=val_ds, epochs=recipe.epochs, callbacks=callbacks,
              shuffle=False, verbose=verbose)
    if os.path.exists(best_weights):
        model.load_weights(best_weights)
    return as_history(log.epochs)


def finish(model, history, name, models_dir, *work_dirs):
    """Save the model and its history under their final names, then clear the work folders
    (a later retrain must not resume from, or keep the best weights of, this finished run).

    Args:
        model: the trained model.
        history: its history (dict of lists).
        name: the model's name (``artifacts.MODEL_FILES``).
        models_dir: the folder of models.
        *work_dirs: the work folders to clear.

    Returns:
        The saved model's path.
    """
    path = artifacts.save_model(model, artifacts.model_path(name, models_dir))
    artifacts.save_json(history, artifacts.history_path(name, models_dir))
    for work_dir in work_dirs:
        for leftover in ("epochs.json", "best.weights.h5"):
            if os.path.exists(os.path.join(work_dir, leftover)):
                os.remove(os.path.join(work_dir, leftover))
    return path


class NotTheModelAskedFor(ValueError):
    """A saved model to reuse is another network than the one asked for (another preset, other
    sizes, another input size)."""


def layout(model):
    """What tells two networks apart: each layer's class and weight shapes (not the layer
    names, which Keras numbers by how many layers were made before)."""
    return [(type(layer).__name__, [tuple(weight.shape) for weight in layer.weights])
            for layer in model.layers]


def same_layout_as(build, name):
    """A ``check`` for ``existing``: ``NotTheModelAskedFor`` unless the saved model has the
    layout of the model ``build`` returns (not another preset, not other widths)."""
    def check(model, path):
        if layout(model) != layout(build()):
            raise NotTheModelAskedFor(
                f"{path} is another {name} network than the recipe asked for builds (another "
                f"preset or other sizes): pass --retrain (notebook: retrain=True) to train the "
                f"one asked for in its place.")
    return check


def existing(name, models_dir, retrain, check=None):
    """The saved model and history, unless ``retrain``.

    Args:
        name: the model's name (``artifacts.MODEL_FILES``).
        models_dir: the folder of models.
        retrain: whether to train again whatever exists.
        check: default None; else a function given the saved model and its path that raises
            ``NotTheModelAskedFor`` when it is not the one asked for (e.g. ``same_layout_as``),
            before "Reusing" is said: the file is then neither reused nor replaced unasked.

    Returns:
        ``(model, history)`` when the model exists and ``retrain`` is off, else None.
    """
    path = artifacts.model_path(name, models_dir)
    if retrain or not os.path.exists(path):
        return None
    model = artifacts.load_model(path)
    if check is not None:
        check(model, path)
    print(f"Reusing {path} (trained earlier); set retrain=True to train it again.")
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
    """Whether the training step is compiled with XLA.

    Keras' own "auto" is decided inside Keras and can leave XLA off without a word
    (tf-keras#418); this one is decided here and reaches ``compile`` as True or False. Under
    TensorFlow it is off with several replicas: XLA under ``MirroredStrategy`` breaks
    mixed_float16's loss scaling (keras#21366) and, on logical CPU devices, reads variables
    across devices. JAX compiles every step with XLA (off, it would run op by op); PyTorch's
    compilation is left off.

    Args:
        jit_compile: "auto" (default), True or False.
        strategy: the strategy the model trains under (default None: the current one).

    Returns:
        ``jit_compile`` when True or False; for "auto": under TensorFlow True on a GPU with
        one replica, under JAX True, else False.
    """
    if not (isinstance(jit_compile, bool) or jit_compile == "auto"):
        raise ValueError(f"jit_compile must be 'auto', True or False, got {jit_compile!r}")
    if jit_compile != "auto":
        return jit_compile
    if backend() != "tensorflow":
        return backend() == "jax"
    return bool(gpu_names()) and replicas(strategy or current_strategy()) == 1


def layers_without_xla(model):
    """The layers of ``model`` that XLA cannot compile.

    Args:
        model: a Keras model (nested models are searched too).

    Returns:
        A list of layer names.
    """
    names = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names += layers_without_xla(layer)
        elif not layer.supports_jit:
            names.append(layer.name)
    return names


def xla_allowed(jit_compile):
    """A context in which ``jit_compile`` is honoured: under TensorFlow op determinism (which
    ``set_seed`` turns on for CPUs) is off inside it when ``jit_compile`` (Keras silently
    drops XLA under it; ``tf_runtime.xla_allowed``); other backends need nothing.

    Args:
        jit_compile: whether the model in the block is compiled with XLA.
    """
    if backend() == "tensorflow":
        return tf_runtime().xla_allowed(jit_compile)
    return contextlib.nullcontext()


def compile_with_xla(model, recipe, steps_per_epoch, jit_compile):
    """``compile_model`` with XLA on or off as asked, never silently otherwise.

    Args:
        model: the model to compile.
        recipe: a ``recipes.Recipe``.
        steps_per_epoch: optimizer steps in one epoch.
        jit_compile: True or False.

    Returns:
        ``model``, compiled; ``FastPathError`` when XLA cannot be had as asked.
    """
    if jit_compile and layers_without_xla(model):
        raise FastPathError(f"XLA was asked for, but layer(s) {layers_without_xla(model)} of "
                            f"{model.name!r} have no XLA kernel (supports_jit=False)")
    compile_model(model, recipe, steps_per_epoch, jit_compile=bool(jit_compile))
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


def plain_path():
    """The path that avoids every known fast-path failure on this backend: ``PLAIN_PATH``
    under TensorFlow; elsewhere float32 with augmentation in the model (no tf.data there)
    and the backend's own compilation (``use_jit("auto")``)."""
    if backend() == "tensorflow":
        return PLAIN_PATH
    return TrainingPath(use_jit("auto"), "model", "float32")


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """What a notebook trains with, handed to each training call: its distribution, where the
    fast path's parts run and the precision."""

    strategy: object  # a tf.distribute.Strategy, a keras.distribution.Distribution or OneDevice
    augment_on: str  # "auto", "pipeline" or "model"
    jit_compile: object  # "auto", True or False
    precision: str  # the Keras dtype policy models train in ("float32", "mixed_...")
    description: str  # the hardware line, and the forced paths when forced


def set_up_training(precision="auto", augment_on="auto", jit_compile="auto",
                    force_gpu_paths=False, seed=0):
    """Seed, precision and distribution of a notebook's training.

    Args:
        precision: "auto" (default) or a Keras policy name: see ``hardware.set_up_hardware``.
        augment_on: "auto" (default), "pipeline" or "model": see ``augment_in_model``.
        jit_compile: "auto" (default), True or False: see ``use_jit``.
        force_gpu_paths: True turns every GPU-only path on at once, also on a CPU:
            mixed_float16 with loss scaling, XLA, augmentation in the model and, under
            TensorFlow, ``MirroredStrategy`` (over 2 logical devices on a CPU). Default False.
        seed: the random seed (default 0).

    Returns:
        A ``TrainingSetup``: hand its strategy, augment_on, jit_compile and precision to
        ``train_image_model`` (and ``transfer.train_vgg16``).
    """
    set_seed(seed)
    if force_gpu_paths:
        precision, augment_on, jit_compile = "mixed_float16", "model", True
    mirror = force_gpu_paths and backend() == "tensorflow"
    hardware = set_up_hardware(precision, cpu_devices=2 if mirror else 1)
    description = hardware.description
    if force_gpu_paths:
        forced = fast_path("original", augment_on, jit_compile, hardware.strategy,
                           hardware.precision).fast_parts()
        description += "\nGPU paths forced: " + ", ".join(forced)
        if not mirror:
            description += f" (not MirroredStrategy: {TF_ONLY})"
    if backend() == "torch":
        description += ("\nPyTorch: training runs without compilation and is not tested here; "
                        "TensorFlow and JAX are the tested backends.")
    return TrainingSetup(hardware.strategy, augment_on, jit_compile, hardware.precision,
                         description)


def fast_path(kind, augment_on="auto", jit_compile="auto", strategy=None, precision="float32"):
    """The training path asked for.

    Args:
        kind: the augmentation preset, or None (then there is nothing to put in the model).
        augment_on: "auto" (default), "pipeline" or "model": see ``augment_in_model``.
        jit_compile: "auto" (default), True or False: see ``use_jit``.
        strategy: default None: the current strategy.
        precision: the Keras dtype policy to train in (default "float32"; a
            ``TrainingSetup`` carries the one chosen for the machine).

    Returns:
        A ``TrainingPath``.
    """
    in_model = kind is not None and augment_in_model(augment_on)
    return TrainingPath(use_jit(jit_compile, strategy), "model" if in_model else "pipeline",
                        precision)


def fallback_paths(path):
    """The paths to try, in order.

    Args:
        path: the ``TrainingPath`` asked for.

    Returns:
        ``path``, then (under TensorFlow) ``path`` without XLA (which avoids every known
        failure above and keeps mixed precision), then ``plain_path()``; each only where it
        differs from the one before. (JAX without XLA would run op by op: not a fallback.)
    """
    paths = [path]
    candidates = [plain_path()]
    if backend() == "tensorflow":
        candidates.insert(0, dataclasses.replace(path, jit_compile=False))
    for candidate in candidates:
        if candidate != paths[-1]:
            paths.append(candidate)
    return paths


class StepWatch(keras.callbacks.Callback):
    """Counts the training steps done: a failure before the first one is a start-up failure.

    It counts at the start of the next step (or of validation, or at the epoch's end), never
    at a step's end: a callback with a batch-end hook makes Keras wait for each step's
    results, which stalls a GPU under JAX.
    """

    def __init__(self):
        super().__init__()
        self.steps, self._begun = 0, 0

    def on_train_batch_begin(self, batch, logs=None):
        self.steps = self._begun  # every step begun before this one has run
        self._begun += 1

    def on_test_begin(self, logs=None):
        self.steps = self._begun

    def on_epoch_end(self, epoch, logs=None):
        self.steps = self._begun


class EpochBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` saving once per epoch (its default), marked safe for Keras'
    asynchronous batch callbacks: its batch-end hook saves only with ``save_freq`` in
    batches, yet its mere presence would make Keras wait for every step's results."""

    async_safe = True


def startup_failure(error):
    """Whether ``error`` looks like a fast path that cannot compile or run.

    Args:
        error: the exception raised before the first training step.

    Returns:
        True for an XLA compile error, an op without a kernel or a distribution error (on any
        backend); False for out-of-memory (and anything else, e.g. a bad input).
    """
    if out_of_memory(error):
        return False
    return "OpError" in _class_names(error) or isinstance(
        error, (RuntimeError, NotImplementedError, TypeError))


def _class_names(error):
    return {cls.__name__ for cls in type(error).__mro__}


_PREAMBLE = re.compile(r"Graph execution error|Detected at node|<stack traces unavailable>|"
                       r"The op is created at|File |\[\[|\d+ root error")


def error_summary(error, width=200):
    """``error`` in one short line.

    Args:
        error: an exception.
        width: the most characters (default 200).

    Returns:
        Its type and the first line of its message that is not TensorFlow's preamble or a
        stack frame, without the compiled graph's long name.
    """
    lines = [re.sub(r"^\(\d+\) ", "", line.strip()) for line in str(error).splitlines()]
    lines = [line for line in lines if line and not _PREAMBLE.match(line)]
    text = re.sub(r"__inference_\S*|\(defined @ [^)]*\)", "", lines[0] if lines else "")
    text = " ".join(text.split())
    text = f"{type(error).__name__}: {text}".rstrip(": ")
    return text if len(text) <= width else text[:width - 3] + "..."


def train_with_fallback(attempt, path, name):
    """``attempt(path, watch)``, falling back along ``fallback_paths(path)`` when it fails
    before its first training step with a ``startup_failure``.

    Each fallback issues one ``FastPathWarning`` of one line that says what was turned off.
    Failures after the first step, and failures of the last path, are raised as they are.

    Args:
        attempt: builds, compiles and trains on a ``TrainingPath``; gives ``watch`` (a
            ``StepWatch``) to ``fit`` and returns what the caller needs.
        path: the ``TrainingPath`` asked for.
        name: the model's name, for the warning.

    Returns:
        What the first attempt that succeeds returns.
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


def fit_on_images(build, data, recipe, work_dir, seed=0, augment_on="auto", strategy=None,
                  verbose=1, jit_compile="auto", callbacks=()):
    """Pipelines of ``data``'s images -> model built under ``strategy``, augmented where
    ``augment_on`` says -> ``fit``.

    Args:
        build: a function returning the model to train (called under ``strategy``).
        data: a ``data.Dataset``: its training and validation splits are used.
        recipe: a ``recipes.Recipe``.
        work_dir: the folder of checkpoints and the epoch log (see ``fit``).
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
    kind = recipe.augmentation
    flips = AlternatingFlips(len(data.x_train), seed) if recipe.alternating_flips else None
    random_mirror = flips is None  # else the batches mirror, not the augmentation
    train_ds = make_batches(data.x_train, data.y_train, recipe.batch_size, shuffle=True,
                            augment=pipeline_augmentation(kind, seed, augment_on, random_mirror),
                            seed=seed, flips=flips)
    val_ds = make_batches(data.x_val, data.y_val, recipe.batch_size)
    with (strategy or current_strategy()).scope():
        model = build()
        trainee = model_to_train(model, kind, seed, augment_on, recipe.corruption, random_mirror)
        history = fit(trainee, train_ds, val_ds, recipe, work_dir, verbose, jit_compile=jit_compile,
                      callbacks=[*corruption_callbacks(recipe), *([flips] if flips else []),
                                 *callbacks])
    return model, history


def check_recipe(recipe):
    """``recipe`` if it is a ``recipes.Recipe``, else a ``TypeError`` saying how to get one.

    Args:
        recipe: what a caller passed as a recipe.

    Returns:
        ``recipe``.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a recipes.Recipe (e.g. recipes.recipe('baseline', "
                        f"epochs=5)), got {recipe!r}")
    return recipe


def train_image_model(name, build, data, recipe, models_dir="models", retrain=False, seed=0,
                      strategy=None, verbose=1, augment_on="auto", jit_compile="auto",
                      precision="float32"):
    """Build (under ``strategy``, in ``precision``), train on ``data`` and save the model
    called ``name``.

    Should the fast path asked for fail before its first step, training starts again along
    ``fallback_paths`` (under TensorFlow without XLA, then float32 with augmentation in
    tf.data), with a one-line ``FastPathWarning`` each time. The saved model is float32
    either way.

    Args:
        name: the model's name (``artifacts.MODEL_FILES``): where it is saved.
        build: a function returning a fresh model.
        data: a ``data.Dataset``.
        recipe: a ``recipes.Recipe``, e.g. ``recipes.recipe("baseline", epochs=5)``.
        models_dir: where models, histories and checkpoints go (default "models").
        retrain: default False: an existing saved model is reused if it has the layers
            ``build`` makes (else ``NotTheModelAskedFor``).
        seed: the random seed (default 0).
        strategy: default None: the current strategy.
        verbose: Keras verbosity (default 1).
        augment_on: "auto" (default), "pipeline" or "model": where augmentation runs
            (see ``augment_in_model``).
        jit_compile: "auto" (default), True or False: whether XLA compiles the training step
            (see ``use_jit``).
        precision: the Keras dtype policy the model computes in (default "float32";
            ``set_up_training`` picks one for the machine).

    Returns:
        ``(model, history)``.
    """
    check_recipe(recipe)
    augment_in_model(augment_on)  # refuse bad values before any work
    use_jit(jit_compile)
    precision = resolve_precision(precision)
    found = existing(name, models_dir, retrain, same_layout_as(build, name))
    if found:
        return found
    strategy = strategy or current_strategy()
    work_dir = os.path.join(models_dir, "checkpoints", name)

    def attempt(path, watch):
        set_seed(seed)
        with precision_policy(path.precision):
            return fit_on_images(build, data, recipe, work_dir, seed, path.augment_on, strategy,
                                 verbose, path.jit_compile, callbacks=[watch])

    model, history = train_with_fallback(
        attempt, fast_path(recipe.augmentation, augment_on, jit_compile, strategy, precision),
        name)
    finish(model, history, name, models_dir, work_dir)
    return model, history
