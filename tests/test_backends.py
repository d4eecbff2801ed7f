"""Training on whichever Keras backend runs the tests (TensorFlow by default; JAX in CI's
second environment, which has no TensorFlow): the TF-free input, the training setup, the
fast path's bookkeeping, and a saved model's way from one backend to another."""

import importlib.util
import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from cifar100cnn import artifacts, hardware, inputs, models, recipes, training

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_array_batches_cover_every_row_once_per_epoch_in_a_seeded_order():
    x = np.arange(10 * 3072, dtype=np.int64).reshape(10, 32, 32, 3).astype(np.uint8)
    y = np.arange(10, dtype=np.int64)
    batches = inputs.ArrayBatches([x, y], batch_size=4, shuffle=True, seed=3)
    assert len(batches) == 3 and len(batches[2][1]) == 2  # the last batch is smaller
    first = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(first) == list(range(10)) and batches[0][1].dtype == np.int32
    assert batches[0][0].dtype == np.uint8
    batches.on_epoch_end()
    second = np.concatenate([batches[i][1] for i in range(len(batches))])
    assert sorted(second) == list(range(10)) and not np.array_equal(first, second)
    again = inputs.ArrayBatches([x, y], batch_size=4, shuffle=True, seed=3)
    np.testing.assert_array_equal(np.concatenate([again[i][1] for i in range(3)]), first)
    plain = inputs.ArrayBatches([x], batch_size=4)
    np.testing.assert_array_equal(plain[1], x[4:8])
    with pytest.raises(IndexError):
        plain[3]


def test_make_batches_follow_the_backend():
    x = np.zeros((8, 32, 32, 3), np.uint8)
    batches = inputs.make_batches(x, np.arange(8), batch_size=4)
    assert inputs.batch_count(batches) == 2
    if keras.config.backend() == "tensorflow":
        assert not isinstance(batches, keras.utils.PyDataset)  # tf.data, the faithful path
    else:
        assert isinstance(batches, inputs.ArrayBatches)
        with pytest.raises(ValueError, match="needs TensorFlow's tf.data"):
            inputs.make_batches(x, np.arange(8), augment=object())
    with pytest.raises(ValueError, match="must lie in 0..99"):
        inputs.make_batches(x, np.full(8, 100))


def test_step_watch_counts_steps_that_ran_without_a_batch_end_hook():
    watch = training.StepWatch()
    assert keras.callbacks.Callback.on_train_batch_end is type(watch).on_train_batch_end
    watch.on_train_batch_begin(0)
    assert watch.steps == 0  # the first step began; none has run
    watch.on_train_batch_begin(1)
    assert watch.steps == 1
    one = training.StepWatch()
    one.on_train_batch_begin(0)
    one.on_test_begin()
    assert one.steps == 1  # validation only starts after the epoch's steps
    assert training.EpochBackup.async_safe


@pytest.mark.parametrize("error, expected", [
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate"), False),
    (type("ResourceExhaustedError", (RuntimeError,), {})("OOM"), False),
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory"), False),
    (RuntimeError("INTERNAL: XLA compilation failed"), True),
    (NotImplementedError("no kernel"), True),
    (ValueError("bad input"), False),
])
def test_startup_failures_are_told_from_out_of_memory_on_any_backend(error, expected):
    assert training.startup_failure(error) is expected
    assert hardware.out_of_memory(error) is (not expected and not isinstance(error, ValueError))


def test_the_setup_carries_the_precision_and_the_global_policy_stays():
    setup = training.set_up_training("mixed_bfloat16", seed=0)
    assert setup.precision == "mixed_bfloat16" and "precision mixed_bfloat16" in setup.description
    assert keras.config.dtype_policy().name == "float32"
    assert hardware.replicas(setup.strategy) == 1
    with pytest.raises(ValueError, match="precision must be one of"):
        training.set_up_training("fp16")


def test_the_plain_path_fits_the_backend():
    plain = training.plain_path()
    if keras.config.backend() == "tensorflow":
        assert plain == training.PLAIN_PATH
    else:  # no tf.data: augmentation stays in the model; JAX keeps compiling
        assert plain.augment_on == "model" and plain.precision == "float32"
        assert plain.jit_compile is (keras.config.backend() == "jax")
        fast = training.TrainingPath(True, "model", "mixed_bfloat16")
        assert training.fallback_paths(fast) == [fast, plain]


def tiny_model():
    inputs_ = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs_)
    x = keras.layers.Conv2D(4, 3, strides=4)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs_, keras.layers.Dense(100, activation="softmax", dtype="float32")(x),
                       name="tiny")


def test_training_in_mixed_precision_saves_a_float32_model_and_resumes(tmp_path, tiny_dataset):
    """The whole training call on this backend: the precision asked for, augmentation where
    the backend puts it, the epoch log, best weights, and the float32 model saved."""
    dataset = tiny_dataset(240, 20)
    compiled = []
    original = training.compile_model

    def spy(model, *args, **kwargs):
        compiled.append(original(model, *args, **kwargs))
        return compiled[-1]

    training.compile_model, folder = spy, str(tmp_path / "models")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", training.FastPathWarning)
            _, history = training.train_image_model(
                "third_original", tiny_model, dataset, recipes.recipe("third_original", epochs=2),
                folder, verbose=0, precision="mixed_bfloat16")
    finally:
        training.compile_model = original
    trainee = compiled[-1]
    assert trainee.dtype_policy.name == "mixed_bfloat16" or any(
        layer.dtype_policy.name == "mixed_bfloat16" for layer in trainee.layers)
    assert len(history["loss"]) == 2 and len(history["seconds"]) == 2
    saved = artifacts.load_model(artifacts.model_path("third_original", folder))
    assert {w.dtype for w in saved.weights} == {"float32"} and saved.name == "tiny"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.skipif(importlib.util.find_spec("jax") is None
                    or keras.config.backend() == "jax", reason="needs JAX beside this backend")
def test_a_model_trained_under_jax_loads_here(tmp_path):
    """Saved by a JAX process, loaded and run by this one (TensorFlow by default)."""
    script = ("import sys; from cifar100cnn import data, models, recipes, training; "
              "d = data.synthetic_dataset(240, 20, source='t'); "
              "training.train_image_model('baseline', models.build_baseline, d, "
              "recipes.recipe('baseline', epochs=1), sys.argv[1], verbose=0)")
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env,
                   timeout=600, cwd=ROOT)
    model = artifacts.load_model(artifacts.model_path("baseline", str(tmp_path)))
    out = model(np.zeros((2, 32, 32, 3), np.uint8), training=False)
    assert tuple(out.shape) == (2, 100)


def test_no_module_outside_the_tf_ones_imports_tensorflow():
    """TensorFlow is imported only by the modules named for it (and the TF-only distributed
    training), so that the package trains where TensorFlow is not installed."""
    allowed = {"tf_runtime.py", "tf_pipeline.py", "distributed.py"}
    package = os.path.join(ROOT, "cifar100cnn")
    training_side = ("augment.py", "data.py", "hardware.py", "inputs.py", "models.py",
                     "optimization.py", "recipes.py", "training.py", "transfer.py", "tuning.py")
    for name in training_side:
        assert name not in allowed
        with open(os.path.join(package, name)) as f:
            text = f.read()
        assert "import tensorflow" not in text and "from tensorflow" not in text, name
    found = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys; import cifar100cnn.training; "
         "print(json.dumps('tensorflow' in sys.modules))"],
        env=dict(os.environ, KERAS_BACKEND="jax" if importlib.util.find_spec("jax") else
                 keras.config.backend(),
                 PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])),
        capture_output=True, text=True, cwd=ROOT, timeout=300).stdout.strip().splitlines()[-1])
    if importlib.util.find_spec("jax"):
        assert found is False


def test_augmentation_place_follows_the_backend():
    from cifar100cnn import augment

    assert augment.augment_in_model("model") is True
    if keras.config.backend() == "tensorflow":
        assert augment.augment_in_model("pipeline") is False
        assert augment.augment_in_model("auto") is bool(hardware.gpu_names())
    else:  # no tf.data map: always in the model, and "pipeline" is refused in one line
        assert augment.augment_in_model("auto") is True
        with pytest.raises(ValueError, match="augment_on='pipeline' needs TensorFlow"):
            augment.augment_in_model("pipeline")


def test_an_interrupted_training_resumes_at_the_next_epoch(tmp_path, tiny_dataset, monkeypatch):
    """BackupAndRestore, the epoch log and the best weights across a kill, on this backend."""
    dataset, folder = tiny_dataset(240, 20), str(tmp_path / "models")
    recipe = recipes.recipe("baseline", epochs=3)

    class KilledInEpoch1(training.StepWatch):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # as Ctrl-C or a kill, after epoch 0 was backed up

    monkeypatch.setattr(training, "StepWatch", KilledInEpoch1)
    with pytest.raises(KeyboardInterrupt):
        training.train_image_model("baseline", tiny_model, dataset, recipe, folder, verbose=0)
    assert not os.path.exists(artifacts.model_path("baseline", folder))
    monkeypatch.undo()
    begun = []
    monkeypatch.setattr(training.EpochLog, "on_epoch_begin",
                        lambda self, epoch, logs=None: begun.append(epoch) or
                        setattr(self, "_started", 0.0))
    _, history = training.train_image_model("baseline", tiny_model, dataset, recipe, folder,
                                            verbose=0)
    assert begun == [1, 2]  # resumed after the epoch done before the kill
    assert len(history["loss"]) == 3 and os.path.exists(artifacts.model_path("baseline", folder))


_DATA_PARALLEL = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import keras
from cifar100cnn import artifacts, data, hardware, models, recipes, training
strategy = keras.distribution.DataParallel(devices=keras.distribution.list_devices("cpu"))
dataset = data.synthetic_dataset(400, 20, source="t")
_, history = training.train_image_model("baseline", models.build_baseline, dataset,
                                        recipes.recipe("baseline", epochs=2), sys.argv[1],
                                        strategy=strategy, verbose=0)
loaded = artifacts.load_model(artifacts.model_path("baseline", sys.argv[1]))
print("RESULT", json.dumps({"replicas": hardware.replicas(strategy),
                            "epochs": len(history["loss"]), "params": loaded.count_params()}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs JAX")
def test_data_parallel_under_jax_trains_over_two_devices(tmp_path):
    """keras.distribution.DataParallel, as several GPUs get it under JAX, over two CPU devices."""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _DATA_PARALLEL, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(lines[-1][len("RESULT "):])
    assert report == {"replicas": 2, "epochs": 2,
                      "params": models.build_baseline().count_params()}


@pytest.mark.parametrize("kind", ["tuned", "original"])
def test_augmentation_inside_the_model_trains_without_xla_too(kind):
    """The fast path's first fallback (XLA off, augmentation kept in the model) must run."""
    from cifar100cnn import augment, optimization

    x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    trainee = augment.model_to_train(tiny_model(), kind, 0, "model")
    optimization.compile_model(trainee, recipes.recipe("third_original"), 1, jit_compile=False)
    loss = trainee.train_on_batch(x, np.arange(8))
    assert np.isfinite(np.asarray(loss, dtype=float)).all()
