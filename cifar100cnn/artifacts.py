"""Saving and loading of models, arrays and histories: atomic writes, safe reads.

Every write goes to a temporary file in the target folder, is flushed to disk (fsync) and
renamed into place, so an interruption or a power cut never leaves a truncated file under the
final name. Every model is saved by ``save_model`` in a form every Keras 3 release from 3.8 on
reads, on any backend, without this package (``portability``), and read through
``load_model``, which keeps Keras' ``safe_mode`` on, checks the model's shape and says in one
line which Keras a file too new for the installed one needs.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile

import numpy as np

from . import portability

MODEL_FILES = {
    "baseline": "cifar100_basic_cnn.keras",
    "overfit": "cifar100_overfit_cnn.keras",
    "third": "cifar100_third_cnn.keras",
    "third_original": "cifar100_third_original_cnn.keras",
    "vgg16": "cifar100_vgg16_cnn.keras",
}
PRODUCED_BY = {
    "baseline": "TrainingModels.ipynb",
    "overfit": "TrainingModels.ipynb",
    "vgg16": "TrainingModels.ipynb",
    "third": "ThirdModel.ipynb",
    "third_original": "ThirdModel.ipynb",
}
X_TEST_FILE = "cifar100_x_test.npy"
Y_TEST_FILE = "cifar100_y_test.npy"


class ArtifactError(RuntimeError):
    """A saved model or array is missing, unsafe or of the wrong shape."""


def model_path(name, models_dir="models"):
    if name not in MODEL_FILES:
        raise ValueError(f"unknown model name {name!r}; expected one of {list(MODEL_FILES)}")
    return os.path.join(models_dir, MODEL_FILES[name])


def history_path(name, models_dir="models"):
    return model_path(name, models_dir).replace(".keras", ".history.json")


def _temporary_name_parts(path):
    base = os.path.basename(path)
    stem, suffix = os.path.splitext(base)
    if base.endswith(".weights.h5"):
        stem, suffix = base[:-len(".weights.h5")], ".weights.h5"
    return stem, suffix


def remove_stale_temporaries(path):
    """Delete the hidden temporary files that a killed earlier save of ``path`` left behind.

    Only names ``atomic_path`` makes for this very target match (``.<stem>.<8 random
    characters>.tmp<suffix>``); returns the names removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    stem, suffix = _temporary_name_parts(path)
    pattern = re.compile(rf"\.{re.escape(stem)}\.[a-z0-9_]{{8}}\.tmp{re.escape(suffix)}")
    removed = [name for name in os.listdir(folder) if pattern.fullmatch(name)]
    for name in removed:
        os.remove(os.path.join(folder, name))
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Leftovers of an earlier, killed save of the same file are removed first.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temporaries(path)
    stem, suffix = _temporary_name_parts(path)
    handle, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp" + suffix, dir=folder)
    os.close(handle)
    try:
        yield tmp
        # mkstemp creates the file as 0600; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        fsync_file(tmp)  # the data is on disk before the new name points at it
        os.replace(tmp, path)
        fsync_folder(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fsync_file(path):
    """Flush ``path``'s contents to disk (whoever wrote it, through whatever handle)."""
    descriptor = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_folder(folder):
    """Flush a folder's entries (a rename) to disk where the system allows it (POSIX)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; its renames need no such flush
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def replace_with_copy(source, path):
    """Copy ``source`` onto ``path`` atomically (temporary file beside ``path``, fsync, rename):
    ``path`` holds either its previous content or all of ``source``, never a part."""
    with atomic_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path


def export_copy(model):
    """A float32, uncompiled copy of ``model``: no optimizer state, no mixed-precision policy."""
    import keras

    def as_float32(layer):
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=as_float32, recursive=True)
    clone.set_weights(model.get_weights())
    # clone_model copies the compile settings; a fresh wrapper of the same graph has none.
    return plain_wrapper(clone)


def plain_wrapper(model):
    """A functional model over ``model``'s graph whose single input and output are plain
    tensors, not one-element lists: called on an array, a model with a list input makes
    Keras warn "The structure of `inputs` doesn't match" every time."""
    import keras

    def single(tensors):
        return tensors[0] if len(tensors) == 1 else tensors

    return keras.Model(single(model.inputs), single(model.outputs), name=model.name)


def save_model(model, path, portable=True):
    """Save ``model`` (float32, without optimizer state) atomically as a ``.keras`` file.

    Args:
        model: the model.
        path: the ``.keras`` file to write.
        portable: write only what Keras ``portability.OLDEST_KERAS`` knows (default True): the
            arguments newer releases added are left out where they hold their feature-off
            values, so the file opens in every Keras 3 release from 3.8 on, on any backend. A
            model that really uses a newer feature (or a class of its own, which Keras alone
            cannot rebuild) is refused with ``ArtifactError`` and nothing is written; False
            writes it as the installed Keras does.

    Returns:
        ``path``.
    """
    if not str(path).endswith(".keras"):
        raise ValueError(f"model files must end in .keras, got {path!r}")
    copy = export_copy(model)
    with atomic_path(path) as tmp:
        os.remove(tmp)  # Keras refuses to overwrite without asking
        copy.save(tmp)
        if portable:
            try:
                portability.make_portable(tmp)
            except portability.PortabilityError as error:
                reach = (f"so the Keras releases from {portability.OLDEST_KERAS} until "
                         f"{error.version} could not open the file. Build the model without it, "
                         f"or save with portable=False for Keras >= {error.version} only"
                         if error.version else "so Keras alone could not open the file. Build "
                         "the model from Keras' own layers, or save with portable=False")
                raise ArtifactError(f"{path} was not written: {error}, {reach}.") from None
    return path


# Class names in a saved configuration that stand for code of the file's own: a Lambda layer,
# a serialized Python lambda (bytecode; e.g. an activation given as ``lambda x: ...``).
UNSAFE_CLASSES = ("Lambda", "__lambda__")


def unsafe_classes(path):
    """The class names of ``UNSAFE_CLASSES`` in a ``.keras`` file's configuration, found without
    building anything: a ``.keras`` file is a zip archive whose ``config.json`` holds the model's
    configuration as nested ``{"class_name": ..., "config": ...}`` objects.

    Args:
        path: the ``.keras`` file.

    Returns:
        The sorted names found; empty for a safe model or a file that is not a ``.keras``
        archive (``keras.models.load_model`` says what is wrong with that one).
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return []
    found, stack = set(), [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") in UNSAFE_CLASSES:
                found.add(node["class_name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(found)


def load_model(path, expected_input=(32, 32, 3), expected_classes=100):
    """Load a ``.keras`` model with ``safe_mode=True`` and check its input and output shapes.

    A file whose configuration holds a Lambda layer or a Python lambda is refused before
    Keras reads it (``unsafe_classes``).

    Args:
        path: the ``.keras`` file.
        expected_input: the input shape without the batch axis (default ``(32, 32, 3)``).
        expected_classes: the number of outputs (default 100).

    Returns:
        The model, uncompiled, with a single input and output.
    """
    import keras

    path = os.fspath(path)
    if not os.path.isfile(path):
        name = next((n for n, f in MODEL_FILES.items() if path.endswith(f)), None)
        hint = f" Run {PRODUCED_BY[name]} to produce it." if name else ""
        raise ArtifactError(f"model file not found: {path}.{hint}")
    unsafe = unsafe_classes(path)
    if unsafe:
        raise ArtifactError(
            f"{path} contains a Lambda layer or other arbitrary code ({', '.join(unsafe)}), "
            "which can run anything on your machine. It was refused: loading keeps "
            "safe_mode=True. Use models saved by this project (they need no custom code).")
    model = _read_model(path, keras)
    input_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    output_shape = tuple(model.output_shape[1:]) if not isinstance(model.output_shape, list) else None
    if input_shape != tuple(expected_input):
        raise ArtifactError(f"{path} takes inputs of shape {input_shape}; expected "
                            f"{tuple(expected_input)} (32x32 RGB images).")
    if output_shape != (expected_classes,):
        raise ArtifactError(f"{path} outputs shape {output_shape}; expected ({expected_classes},) "
                            "(one probability per CIFAR-100 class).")
    return plain_wrapper(model)  # files saved with a one-element input list, too


def _read_model(path, keras):
    """``keras.models.load_model`` in safe mode; a file written by a newer Keras is read once
    more without the arguments the installed one lacks, where they change nothing (a file from
    another program than this package, saved as is); else one line says what it needs."""
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many kinds, with the whole config in the text
        failure = error
    installed = keras.__version__
    config = portability.read_config(path)
    try:
        portable, dropped = portability.portable_config(config or {}, installed)
    except portability.PortabilityError:
        dropped = 0
    if dropped:
        with tempfile.TemporaryDirectory() as folder:
            copy = os.path.join(folder, os.path.basename(path))
            shutil.copyfile(path, copy)
            portability.rewrite_config(copy, portable)
            try:
                return keras.models.load_model(copy, compile=False, safe_mode=True)
            except Exception:
                pass
    raise ArtifactError(unreadable_model_message(path, failure, installed)) from None


def unreadable_model_message(path, error, installed):
    """One line: which Keras a model file needs when it uses what Keras ``installed`` lacks,
    else what went wrong, cut short (Keras' own message repeats the whole configuration)."""
    version, what = portability.required_keras(path, installed)
    if version:
        command = f'pip install -U "keras>={version}"'
        return (f"{path} needs Keras {version} or newer (it uses {what}); this is Keras "
                f"{installed}: run `{command}` (in a notebook: `%{command}`), then restart the "
                "runtime/kernel.")
    # Keras nests "could not be deserialized properly ... config={...} Exception encountered:
    # <the cause>" once per level; the innermost cause is the useful part.
    cause = str(error).rsplit("Exception encountered:", 1)[-1]
    lines = [line.strip() for line in cause.splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return (f"{path} is not a loadable Keras model ({type(error).__name__}: {reason}). "
            "Re-create it with the notebook that produced it.")


def save_array(array, path):
    """Save a numpy array atomically; float64 is refused (use float32/float16/uint8)."""
    array = np.asarray(array)
    if array.dtype == np.float64 or array.dtype == object:
        raise ValueError(f"refusing to save a {array.dtype} array to {path}; "
                         "convert it to float32, float16 or an integer type first.")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
    return path


def load_array(path):
    """Load a ``.npy`` file with ``allow_pickle=False`` (object arrays are refused)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"array file not found: {path}. Run TrainingModels.ipynb to produce "
                            "the test arrays.")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ArtifactError(f"{path} holds Python objects (pickled data), which could run code "
                            f"when loaded; it was refused ({error}).") from None


def save_json(data, path):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as handle:
            json.dump(data, handle, indent=1)
    return path


def load_json(path):
    with open(path) as handle:
        return json.load(handle)


def save_test_arrays(x_test, y_test, arrays_dir="arrays"):
    """Write the test images and labels (atomically) under their standard names."""
    save_array(x_test, os.path.join(arrays_dir, X_TEST_FILE))
    save_array(y_test, os.path.join(arrays_dir, Y_TEST_FILE))


def load_test_arrays(arrays_dir="arrays"):
    """The test images (uint8) and labels written by TrainingModels.ipynb, checked."""
    from .data import check_images, check_labels

    x_test = load_array(os.path.join(arrays_dir, X_TEST_FILE))
    y_test = load_array(os.path.join(arrays_dir, Y_TEST_FILE))
    check_images(x_test, X_TEST_FILE)
    check_labels(y_test, len(x_test), Y_TEST_FILE)
    return x_test, y_test
