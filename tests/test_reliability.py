"""Reliability and safety of training and saving: interruptions (Ctrl-C, SIGKILL mid-epoch or
mid-save), finished work reused, untrusted model and array files, bad arguments refused before
any work, memory, determinism, several devices. (Dataset faults: test_reliability_data.py.)
Models and data are tiny: a few hundred synthetic images, the baseline model, 1-4 epochs."""

import ast
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap

import fake_cifar
import fault_injection
import keras
import numpy as np
import pytest
import tensorflow as tf

from cifar100cnn import (artifacts, augment, data, hardware, inference, models, recipes,
                         tf_pipeline, training, transfer)
from cifar100cnn.artifacts import ArtifactError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def quiet_train(*args, **kwargs):
    """train_image_model without the model summary on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return training.train_image_model(*args, verbose=0, **kwargs)


def must_not_build():
    raise AssertionError("the model was built although it should not have been")


def same_weights(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


# ===========================================================================
# Interruptions: a hard kill mid-epoch resumes; saves are atomic
# ===========================================================================

@pytest.mark.slow
def test_training_killed_mid_epoch_resumes_and_keeps_the_finished_epochs(tmp_path):
    """fault_injection: SIGKILL mid-epoch after >= 1 completed epoch, rerun, compare: the
    finished epochs' logged values and best weights survive the kill (checked inside)."""
    report = fault_injection.hard_kill_training(str(tmp_path), epochs=4)
    assert report["completed_before_kill"] >= 1
    assert report["rerun_epochs"][0] == report["completed_before_kill"]
    assert report["history_length"] == report["reference_length"] == 4
    assert 0 <= report["best_weights_at_kill_accuracy"] <= 1


def test_array_save_killed_midway_leaves_no_truncated_file(tmp_path):
    """fault_injection.py run as a script (as a user would): SIGKILL while save_array writes,
    for a first save and for an overwrite."""
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, "fault_injection.py"), "--only", "array-save",
         "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    line = [text for text in result.stdout.splitlines() if text.startswith("ok  array-save: ")]
    assert line, result.stdout
    report = json.loads(line[0][len("ok  array-save: "):])
    # The kill really happened mid-write: a partial temp file was left beside the final name,
    # and the next save of the same file cleared it.
    for case in ("first_save", "overwrite"):
        assert report[case]["partial_temp_files"]
        assert report[case]["after_next_save"] == []


def test_stale_temporaries_of_other_files_are_left_alone(tmp_path):
    mine = tmp_path / ".model.ab12cd34.tmp.keras"
    others = [tmp_path / ".model.v2.ab12cd34.tmp.keras",  # another target's leftover
              tmp_path / ".model.ab12cd34.tmp.npy",       # same stem, other kind of file
              tmp_path / "model.keras.bak"]
    for path in [mine, *others]:
        path.write_bytes(b"partial")
    assert artifacts.remove_stale_temporaries(str(tmp_path / "model.keras")) == [mine.name]
    assert all(path.exists() for path in others) and not mine.exists()


@pytest.mark.slow
def test_model_save_killed_midway_keeps_the_previous_model(tmp_path):
    report = fault_injection.kill_during_model_save(str(tmp_path))
    assert 0 < report["partial_temp_size"] < report["old_size"]


def test_ctrl_c_mid_epoch_resumes_at_the_interrupted_epoch(tmp_path, monkeypatch, tiny_dataset):
    """KeyboardInterrupt (Ctrl-C / notebook interrupt) in epoch 2; the rerun runs epochs 2-3."""
    dataset = tiny_dataset()
    begun = []
    real_begin = training.EpochLog.on_epoch_begin

    def on_epoch_begin(self, epoch, logs=None):
        begun.append(epoch)
        real_begin(self, epoch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if interrupt and begun[-1] == 2 and batch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.EpochLog, "on_epoch_begin", on_epoch_begin)
    monkeypatch.setattr(training.EpochLog, "on_train_batch_end", on_train_batch_end)
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        quiet_train("baseline", models.build_baseline, dataset,
                    recipes.recipe("baseline", epochs=4), models_dir=str(tmp_path))
    assert begun == [0, 1, 2]
    log = artifacts.load_json(tmp_path / "checkpoints" / "baseline" / "epochs.json")
    assert sorted(log, key=int) == ["0", "1"]
    assert not os.path.exists(artifacts.model_path("baseline", str(tmp_path)))

    interrupt, begun[:] = False, []
    _, history = quiet_train("baseline", models.build_baseline, dataset,
                             recipes.recipe("baseline", epochs=4), models_dir=str(tmp_path))
    assert begun == [2, 3]
    assert {len(values) for values in history.values()} == {4}
    saved = artifacts.load_json(artifacts.history_path("baseline", str(tmp_path)))
    assert saved == history
    artifacts.load_model(artifacts.model_path("baseline", str(tmp_path)))


def test_failed_first_write_leaves_nothing_under_the_final_name(tmp_path):
    path = tmp_path / "out.npy"
    with pytest.raises(RuntimeError):
        with artifacts.atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                handle.write(b"half a file")
            raise RuntimeError("interrupted")
    assert not path.exists()
    assert os.listdir(tmp_path) == []  # the temporary file is cleaned up too


def test_atomic_write_flushes_the_file_to_disk_before_renaming_it(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor):
        events.append(("fsync", os.fstat(descriptor).st_ino))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(("rename", os.stat(source).st_ino))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    artifacts.save_json({"loss": [1.0]}, tmp_path / "h.json")
    written = os.stat(tmp_path / "h.json").st_ino
    assert events[:2] == [("fsync", written), ("rename", written)]


def test_failed_overwrite_keeps_the_previous_files(tmp_path, monkeypatch, small_model):
    array_path, json_path = tmp_path / "a.npy", tmp_path / "h.json"
    model_path = tmp_path / "m.keras"
    old_array = np.arange(12, dtype=np.uint8)
    artifacts.save_array(old_array, array_path)
    artifacts.save_json({"loss": [1.0]}, json_path)
    old_model = small_model(seed=0)
    artifacts.save_model(old_model, model_path)

    def disk_full(handle):  # writes a few bytes, then fails like a full disk
        handle.write(b"PK\x03\x04 trunc" if "b" in handle.mode else "{\"loss\": [")
        handle.flush()
        raise OSError(28, "No space left on device")

    def broken_model_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            disk_full(handle)

    monkeypatch.setattr(np, "save", lambda handle, *a, **k: disk_full(handle))
    monkeypatch.setattr(json, "dump", lambda obj, handle, **k: disk_full(handle))
    monkeypatch.setattr(keras.Model, "save", broken_model_save)
    with pytest.raises(OSError):
        artifacts.save_array(np.zeros(3, np.uint8), array_path)
    with pytest.raises(OSError):
        artifacts.save_json({"loss": [2.0]}, json_path)
    with pytest.raises(OSError):
        artifacts.save_model(small_model(seed=1), model_path)
    monkeypatch.undo()

    np.testing.assert_array_equal(artifacts.load_array(array_path), old_array)
    assert artifacts.load_json(json_path) == {"loss": [1.0]}
    assert same_weights(artifacts.load_model(model_path).get_weights(), old_model.get_weights())
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "h.json", "m.keras"]


# ===========================================================================
# Finished work is not redone or overwritten unless asked
# ===========================================================================

def test_existing_model_is_reused_and_reported(tmp_path, capsys, small_model, tiny_dataset):
    models_dir = str(tmp_path)
    path = artifacts.model_path("baseline", models_dir)
    saved = small_model(seed=0)
    artifacts.save_model(saved, path)
    artifacts.save_json({"loss": [3.0, 2.0]}, artifacts.history_path("baseline", models_dir))
    before = (os.path.getmtime(path), open(path, "rb").read())

    # The fresh model (another seed: other weights) only serves to compare layers with.
    model, history = training.train_image_model("baseline", lambda: small_model(seed=1),
                                                tiny_dataset(), recipes.recipe("baseline", epochs=1),
                                                models_dir=models_dir)
    out = capsys.readouterr().out
    assert f"Reusing {path}" in out and "retrain=True" in out
    assert history == {"loss": [3.0, 2.0]}
    assert same_weights(model.get_weights(), saved.get_weights())
    assert (os.path.getmtime(path), open(path, "rb").read()) == before


@pytest.mark.parametrize("asked", [
    dict(input_norm="image"),  # the robust preset's layers, where the tuned model is saved
    dict(widths=(8, 16, 24)),  # same layers, other widths
])
def test_a_saved_model_of_another_network_is_refused_and_kept(tmp_path, capsys, tiny_dataset, asked):
    models_dir = str(tmp_path)
    path = artifacts.model_path("third", models_dir)
    small = recipes.recipe("third_tuned", widths=(8, 16, 32))
    artifacts.save_model(models.build("third_tuned", small), path)
    artifacts.save_json({"loss": [3.0]}, artifacts.history_path("third", models_dir))
    before = open(path, "rb").read()
    recipe = dataclasses.replace(small, epochs=1, **asked)
    with pytest.raises(training.NotTheModelAskedFor, match=r"pass --retrain \(notebook: retrain=True\)"):
        training.train_image_model("third", lambda: models.build("third_tuned", recipe),
                                   tiny_dataset(), recipe, models_dir=models_dir)
    assert "Reusing" not in capsys.readouterr().out
    assert open(path, "rb").read() == before


def test_retrain_true_trains_and_replaces(tmp_path, small_model, tiny_dataset):
    models_dir = str(tmp_path)
    path = artifacts.model_path("baseline", models_dir)
    artifacts.save_model(small_model(seed=0), path)
    artifacts.save_json({"loss": [3.0, 2.0]}, artifacts.history_path("baseline", models_dir))
    built = []

    def build():
        built.append(True)
        return models.build_baseline()

    model, history = quiet_train("baseline", build, tiny_dataset(),
                                 recipes.recipe("baseline", epochs=1), models_dir=models_dir,
                                 retrain=True)
    assert built == [True] and len(history["loss"]) == 1
    reloaded = artifacts.load_model(path)
    assert reloaded.count_params() == models.build_baseline().count_params() == 1_870_052
    assert same_weights(reloaded.get_weights(), model.get_weights())
    assert len(artifacts.load_json(artifacts.history_path("baseline", models_dir))["loss"]) == 1
    # Finished: nothing a later retrain could resume from.
    work_dir = os.path.join(models_dir, "checkpoints", "baseline")
    assert not [name for name in os.listdir(work_dir)
                if name in ("epochs.json", "best.weights.h5", "backup")]


def test_vgg16_is_reused_without_building_its_base(tmp_path, capsys, monkeypatch, small_model,
                                                   tiny_dataset):
    models_dir = str(tmp_path)
    artifacts.save_model(small_model(seed=0), artifacts.model_path("vgg16", models_dir))
    monkeypatch.setattr(transfer, "build_vgg16_base", lambda *a, **k: must_not_build())
    model, _ = transfer.train_vgg16(tiny_dataset(), recipes.recipe("vgg16", epochs=1),
                                    weights="/nonexistent.h5", models_dir=models_dir)
    assert "Reusing" in capsys.readouterr().out
    assert model.output_shape == (None, 100)


def test_vgg16_of_another_input_size_is_refused_and_kept(tmp_path, capsys, monkeypatch,
                                                         tiny_dataset):
    models_dir = str(tmp_path)
    base_inputs = keras.Input(shape=(64, 64, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(base_inputs))
    base = keras.Model(base_inputs, features, name="vgg16")
    inputs = keras.Input(shape=(32, 32, 3))
    outputs = keras.layers.Dense(100, activation="softmax")(base(keras.layers.Resizing(64, 64)(inputs)))
    path = artifacts.model_path("vgg16", models_dir)
    artifacts.save_model(keras.Model(inputs, outputs), path)
    before = open(path, "rb").read()
    monkeypatch.setattr(transfer, "build_vgg16_base", lambda *a, **k: must_not_build())
    with pytest.raises(training.NotTheModelAskedFor, match=r"64x64 inputs, not the 32x32 asked for: pass --retrain"):
        transfer.train_vgg16(tiny_dataset(), recipes.recipe("vgg16", epochs=1),
                             weights="/nonexistent.h5", models_dir=models_dir)
    assert "Reusing" not in capsys.readouterr().out
    assert open(path, "rb").read() == before


# ===========================================================================
# Untrusted model and array files
# ===========================================================================

def test_lambda_model_is_refused_with_safe_mode_message(tmp_path):
    inputs = keras.Input(shape=(32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(100, activation="softmax")(x))
    path = str(tmp_path / "lambda.keras")
    model.save(path)
    with pytest.raises(ArtifactError) as caught:
        artifacts.load_model(path)
    message = str(caught.value)
    assert "Lambda" in message and "safe_mode=True" in message and "refused" in message
    # The file itself is a valid model: only safe mode stops it.
    assert keras.models.load_model(path, safe_mode=False, compile=False).output_shape == (None, 100)


def test_lambda_in_a_nested_model_is_refused_before_keras_reads_the_file(tmp_path, monkeypatch):
    inner = keras.Sequential([keras.layers.Lambda(lambda t: t * 2.0)], name="inner")
    inputs = keras.Input(shape=(32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    model = keras.Model(inputs, keras.layers.Dense(100, activation="softmax")(x))
    path = str(tmp_path / "nested_lambda.keras")
    model.save(path)
    assert artifacts.unsafe_classes(path) == ["Lambda", "__lambda__"]
    # The refusal does not depend on what Keras' own safe mode would say.
    monkeypatch.setattr(keras.models, "load_model", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ArtifactError, match="arbitrary code .*Lambda.*refused"):
        artifacts.load_model(path)


def test_load_model_keeps_safe_mode_on(tmp_path, monkeypatch, small_model):
    path = str(tmp_path / "m.keras")
    artifacts.save_model(small_model(), path)
    seen = {}
    real = keras.models.load_model

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(keras.models, "load_model", spy)
    artifacts.load_model(path)
    assert seen.get("safe_mode") is True


@pytest.mark.parametrize("input_shape, classes, expected", [
    ((28, 28, 1), 100, r"expected \(32, 32, 3\)"),
    ((64, 64, 3), 100, r"expected \(32, 32, 3\)"),
    ((32, 32, 3), 10, r"expected \(100,\)"),
    ((32, 32, 3), 20, r"expected \(100,\)"),
])
def test_model_of_the_wrong_input_or_output_shape_is_rejected(tmp_path, input_shape, classes, expected,
                                                              small_model):
    path = str(tmp_path / "m.keras")
    artifacts.save_model(small_model(input_shape, classes), path)
    with pytest.raises(ArtifactError, match=expected):
        artifacts.load_model(path)


def test_good_model_round_trips_and_bad_files_are_clear_errors(tmp_path, small_model):
    path = str(tmp_path / "m.keras")
    model = small_model()
    artifacts.save_model(model, path)
    assert same_weights(artifacts.load_model(path).get_weights(), model.get_weights())
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(ArtifactError, match="not a loadable Keras model"):
        artifacts.load_model(garbage)
    with pytest.raises(ArtifactError, match="TrainingModels.ipynb"):
        artifacts.load_model(artifacts.model_path("baseline", str(tmp_path)))


def test_object_npy_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([fake_cifar.RunsCode(f"touch '{marker}'")], dtype=object),
            allow_pickle=True)
    with pytest.raises(ArtifactError, match="Python objects"):
        artifacts.load_array(path)
    assert not marker.exists()
    np.load(path, allow_pickle=True)  # the file really is dangerous
    assert marker.exists()
    with pytest.raises(ValueError, match="refusing to save a object array"):
        artifacts.save_array(np.array([{}], dtype=object), tmp_path / "o.npy")


def _package_sources():
    """(path, python source) of every project .py file and notebook code cell (not tests/)."""
    skip = {".git", "tests", "venv", ".venv", "build", "node_modules", ".ipynb_checkpoints"}
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py"):
                with open(path) as handle:
                    yield path, handle.read()
            elif name.endswith(".ipynb"):
                with open(path) as handle:
                    notebook = json.load(handle)
                for cell in notebook.get("cells", []):
                    if cell.get("cell_type") == "code":
                        source = "".join(cell.get("source", []))
                        # IPython magics and shell lines become `pass` (keeps indentation).
                        yield path, "\n".join(
                            line[:len(line) - len(line.lstrip())] + "pass"
                            if line.lstrip().startswith(("%", "!")) else line
                            for line in source.splitlines())


def test_all_model_loading_goes_through_artifacts_load_model():
    """No project code (package, notebooks, benchmarks) loads a model except through
    artifacts.load_model, turns safe_mode off, allows pickles in np.load or unpickles."""
    offenders, scanned = [], 0
    for path, source in _package_sources():
        scanned += 1
        relative = os.path.relpath(path, ROOT)
        for node in ast.walk(ast.parse(source)):
            unsafe = {"safe_mode": False, "allow_pickle": True}
            if isinstance(node, ast.keyword) and node.arg in unsafe \
                    and isinstance(node.value, ast.Constant) and node.value.value is unsafe[node.arg]:
                offenders.append(f"{relative}:{node.value.lineno} {node.arg}={node.value.value}")
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = ast.unparse(node.func.value)
            call = f"{owner}.{node.func.attr}"
            allowed = (relative == os.path.join("cifar100cnn", "artifacts.py")
                       and call in ("keras.models.load_model", "np.load"))
            if node.func.attr == "load_model" and owner != "artifacts" and not allowed:
                offenders.append(f"{relative}:{node.lineno} {call}")
            # (np.load is safe by default: allow_pickle=True is caught by the keyword check.)
            if call in ("pickle.load", "pickle.loads", "joblib.load", "dill.load") and not allowed:
                offenders.append(f"{relative}:{node.lineno} {call}")
    assert scanned >= 5
    assert offenders == []


# ===========================================================================
# Bad arguments -> ValueError naming the expected value, before long work
# ===========================================================================

@pytest.mark.parametrize("kwargs, expected", [
    (dict(recipe="baseline"), r"recipe must be a recipes.Recipe .*, got 'baseline'"),
    (dict(name="mine"), r"unknown model name 'mine'; expected one of \['baseline'"),
    (dict(augment_on="gpu"), r"augment_on must be one of \('auto', 'pipeline', 'model'\)"),
])
def test_train_image_model_refuses_bad_arguments_before_building(tmp_path, kwargs, expected,
                                                                  tiny_dataset):
    arguments = dict(name="baseline", build=must_not_build, data=tiny_dataset(100, 10),
                     recipe=recipes.BASELINE, models_dir=str(tmp_path / "models"))
    arguments.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=expected):
        training.train_image_model(**arguments)
    assert not (tmp_path / "models").exists()


def test_train_vgg16_refuses_a_bad_finetune_recipe_before_any_work(tmp_path, tiny_dataset,
                                                                   monkeypatch):
    monkeypatch.setattr(transfer, "build_vgg16_base", lambda *a, **k: must_not_build())
    with pytest.raises(TypeError, match="recipe must be a recipes.Recipe"):
        transfer.train_vgg16(tiny_dataset(), finetune=True, weights=None,
                             models_dir=str(tmp_path / "models"))
    with pytest.raises(ValueError, match="VGG16 input size"):
        transfer.train_vgg16(tiny_dataset(), recipes.recipe("vgg16", input_size=16),
                             weights=None, models_dir=str(tmp_path / "models"))
    assert not (tmp_path / "models").exists()


def test_bad_training_data_is_refused_before_building(tmp_path, tiny_dataset):
    dataset = tiny_dataset(100, 10)
    dataset.y_train = dataset.y_train.copy()
    dataset.y_train[0] = 100
    with pytest.raises(ValueError, match=r"0\.\.99"):
        training.train_image_model("baseline", must_not_build, dataset,
                                   recipes.recipe("baseline", epochs=1), models_dir=str(tmp_path))
    dataset = tiny_dataset(100, 10)
    dataset.x_train = dataset.x_train.astype(np.float32) / 255
    with pytest.raises(ValueError, match="0-255"):
        training.train_image_model("baseline", must_not_build, dataset,
                                   recipes.recipe("baseline", epochs=1), models_dir=str(tmp_path))


def test_unknown_presets_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown third-model preset 'huge'; expected one of \('tuned', 'original', 'robust'\)"):
        models.build_third("huge")
    with pytest.raises(ValueError, match=r"unknown augmentation 'strong'; expected None or one of "
                                         r"\['original', 'tuned', 'resnet9'\]"):
        augment.build_augmentation("strong")


def test_empty_training_set_is_refused(tmp_path, small_model):
    empty = tf.data.Dataset.from_tensor_slices(
        (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.int64))).batch(10)
    with pytest.raises(ValueError, match="training dataset is empty"):
        training.fit(small_model(), empty, empty, recipes.recipe("baseline", epochs=1), str(tmp_path))


# ===========================================================================
# Memory: uint8 streaming; out-of-memory falls back to smaller batches
# ===========================================================================

def test_pipeline_streams_uint8_without_float_copies():
    import tracemalloc

    x = np.random.default_rng(0).integers(0, 256, (4000, 32, 32, 3), dtype=np.uint8)
    y = np.arange(4000) % 100
    tracemalloc.start()
    try:
        ds = tf_pipeline.make_pipeline(x, y, batch_size=100, shuffle=True)
        first_images, _ = next(iter(ds))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ds.element_spec[0].dtype == tf.uint8
    assert first_images.dtype == tf.uint8 and first_images.shape == (100, 32, 32, 3)
    # tf.data takes one uint8 copy (1x); a float32 copy would need 4x, float16 2x.
    assert peak < 2 * x.nbytes, f"numpy peak {peak:,} B: a float copy of the images was made"
    augmented = tf_pipeline.make_pipeline(x, y, batch_size=100,
                                   augment=augment.build_augmentation("tuned"))
    assert augmented.element_spec[0].shape.as_list() == [None, 32, 32, 3]  # floats per batch only
    dataset = data.load_dataset(quick=True)
    for array in (dataset.x_train, dataset.x_val, dataset.x_test):
        assert array.dtype == np.uint8


class _FakeGpuModel:
    """Returns one row per image; raises ResourceExhaustedError on batches above ``limit``."""

    def __init__(self, limit):
        self.limit, self.calls = limit, []

    def __call__(self, batch, training=False):
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise tf.errors.ResourceExhaustedError(None, None, f"OOM when allocating {len(batch)}")
        return np.stack([batch.reshape(len(batch), -1).mean(axis=1)] * 3, axis=1)


def test_out_of_memory_halves_the_batch(capsys):
    x = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    model = _FakeGpuModel(limit=64)
    out = inference.predict_in_batches(model, x, batch_size=500)
    expected = np.stack([x.reshape(300, -1).mean(axis=1)] * 3, axis=1).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert model.calls[:4] == [300, 250, 125, 62]
    assert max(size for size in model.calls[3:]) <= 62
    assert "Out of memory; retrying with batches of 62" in capsys.readouterr().out


def test_out_of_memory_at_batch_one_is_raised_not_looped():
    model = _FakeGpuModel(limit=0)
    with pytest.raises(tf.errors.ResourceExhaustedError):
        inference.predict_in_batches(model, np.zeros((5, 32, 32, 3), np.uint8), batch_size=8)
    assert model.calls == [5, 4, 2, 1]


def test_vgg16_feature_extraction_survives_out_of_memory(tmp_path, monkeypatch, capsys, tiny_dataset):
    """train_vgg16 with a small stand-in base that runs out of memory above 32 images."""

    def tiny_base(weights, input_size=32):
        inputs = keras.Input(shape=(32, 32, 3))
        x = keras.layers.Conv2D(8, 3, strides=8)(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Reshape((1, 1, 8))(x), name="vgg16")

    real_extractor = transfer.vgg16_feature_extractor

    def oom_extractor(base):
        extractor = real_extractor(base)

        def run(batch, training=False):
            if len(batch) > 32:
                raise tf.errors.ResourceExhaustedError(None, None, "OOM")
            return extractor(batch, training=training)
        return run

    monkeypatch.setattr(transfer, "build_vgg16_base", tiny_base)
    monkeypatch.setattr(transfer, "vgg16_feature_extractor", oom_extractor)
    model, history = transfer.train_vgg16(tiny_dataset(), recipes.recipe("vgg16", epochs=1),
                                          weights=None, models_dir=str(tmp_path), verbose=0)
    assert "Out of memory; retrying with batches of" in capsys.readouterr().out
    assert len(history["loss"]) == 1 and model.output_shape == (None, 100)


# ===========================================================================
# Determinism
# ===========================================================================

def test_same_seed_gives_the_same_split_and_synthetic_data():
    a, b = data.load_dataset(quick=True, seed=5), data.load_dataset(quick=True, seed=5)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    c = data.load_dataset(quick=True, seed=6)
    assert not np.array_equal(a.x_train, c.x_train)
    # The split is the original one: first 80% train, last 20% validation, no shuffling.
    (x, y), _ = data.make_synthetic(2000, 500, seed=5)
    np.testing.assert_array_equal(a.x_train, x[:1600])
    np.testing.assert_array_equal(a.x_val, x[1600:])


def test_same_seed_gives_the_same_shuffle_order():
    x = np.repeat(np.arange(50, dtype=np.uint8), 3072).reshape(50, 32, 32, 3)
    y = np.arange(50)

    def first_epoch(seed):
        return np.concatenate([labels.numpy() for _, labels in
                               tf_pipeline.make_pipeline(x, y, 10, shuffle=True, seed=seed)])

    assert np.array_equal(first_epoch(1), first_epoch(1))
    assert not np.array_equal(first_epoch(1), first_epoch(2))


_TRAIN_AND_HASH = textwrap.dedent("""
    import contextlib, hashlib, io, json, tempfile
    from cifar100cnn import data, models, recipes, training
    dataset = data.synthetic_dataset(300, 50, seed=0, source="synthetic (test)")
    with contextlib.redirect_stdout(io.StringIO()):
        model, history = training.train_image_model("third_original", models.build_third_original,
                                                    dataset,
                                                    recipes.recipe("third_original", epochs=2),
                                                    models_dir=tempfile.mkdtemp(), seed=0,
                                                    verbose=0)
    digest = hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest()
    print("RESULT", json.dumps({"sha": digest, "loss": history["loss"]}))
""")


def _weights_sha(weights):
    import hashlib
    return hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()


@pytest.mark.slow
def test_same_seed_gives_bit_identical_training_on_cpu(tmp_path, tiny_dataset, script_result):
    """Two quick trainings (with augmentation and dropout) with the same seed: identical
    weights and history, also in a fresh process; another seed differs."""
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("bit-identical training is only promised on CPU (docs/TROUBLESHOOTING.md)")
    runs = []
    for index, seed in enumerate((0, 0, 1)):
        model, history = quiet_train("third_original", models.build_third_original, tiny_dataset(),
                                     recipes.recipe("third_original", epochs=2),
                                     models_dir=str(tmp_path / str(index)), seed=seed)
        history.pop("seconds")
        runs.append((model.get_weights(), history))
    assert same_weights(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    assert not same_weights(runs[0][0], runs[2][0])

    fresh = script_result(_TRAIN_AND_HASH, timeout=300)
    assert fresh["loss"] == runs[0][1]["loss"]
    assert fresh["sha"] == _weights_sha(runs[0][0])


# ===========================================================================
# MirroredStrategy with several devices
# ===========================================================================

def test_several_gpus_select_mirrored_strategy(monkeypatch):
    """The choice itself, with two GPUs faked: MirroredStrategy; with one: the default."""
    created, policies = [], []

    class FakeMirrored:
        num_replicas_in_sync = 2

        def __init__(self, devices=None):
            created.append(devices)

    fake_gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)]
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: fake_gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"device_name": "Fake GPU"})
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", FakeMirrored)
    monkeypatch.setattr(keras.mixed_precision, "set_global_policy", policies.append)
    setup = hardware.set_up_hardware()
    assert isinstance(setup.strategy, FakeMirrored) and created == [None]
    assert setup.precision == "mixed_float16" and "2 GPU(s)" in setup.description
    assert policies == []  # the precision travels with the setup, not as a global policy

    fake_gpus.pop()
    assert not isinstance(hardware.set_up_hardware().strategy, FakeMirrored)
    assert len(created) == 1


_MIRRORED_ON_CPU = textwrap.dedent("""
    import contextlib, io, json, os, tempfile
    from cifar100cnn import artifacts, data, hardware, models, recipes, training
    strategy, text = hardware.configure_hardware(cpu_devices=2)  # before TF runs anything
    import tensorflow as tf
    dataset = data.synthetic_dataset(300, 50, seed=0, source="synthetic (test)")
    folder = tempfile.mkdtemp()
    with contextlib.redirect_stdout(io.StringIO()):
        model, history = training.train_image_model("baseline", models.build_baseline, dataset,
                                                    recipes.recipe("baseline", epochs=2),
                                                    models_dir=folder, strategy=strategy,
                                                    verbose=0)
    loaded = artifacts.load_model(artifacts.model_path("baseline", folder))
    print("RESULT", json.dumps({
        "strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
        "devices": list(strategy.extended.worker_devices), "text": text,
        "mirrored_variable": isinstance(model.weights[0].value, tf.distribute.DistributedValues),
        "epochs": len(history["loss"]), "loaded_params": loaded.count_params()}))
""")


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_logical_cpus(script_result):
    report = script_result(_MIRRORED_ON_CPU, timeout=300, CUDA_VISIBLE_DEVICES="")
    assert report["strategy"] == "MirroredStrategy" and report["replicas"] == 2
    assert [device.split("/")[-1] for device in report["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert "MirroredStrategy with 2 replica(s)" in report["text"]
    assert report["mirrored_variable"] is True
    assert report["epochs"] == 2 and report["loaded_params"] == 1_870_052
