"""Automatic precision, and every GPU-only path forced on a CPU —
XLA (jit_compile), augmentation inside the model, mixed_float16 with loss scaling,
MirroredStrategy — each ending in a float32 model that loads in safe mode; the fast path's
fallback when it fails before its first step. Tiny models and data: seconds per test."""

import os
import textwrap
import warnings

import pytest

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

from cifar100cnn import artifacts, augment, data, hardware, recipes, training

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def dataset():
    # 240 training images: 3 batches of the recipes' 100.
    return data.synthetic_dataset(300, 50, seed=0, source="synthetic (test)")


@pytest.fixture(autouse=True)
def float32_after():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def compiled(monkeypatch):
    """Every model the training code compiles, in order."""
    seen = []
    original = training.compile_model

    def spy(model, *args, **kwargs):
        seen.append(original(model, *args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(training, "compile_model", spy)
    return seen


def tiny_model():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(100, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="tiny")


def train(dataset, folder, recipe="third_original", build=tiny_model, **kwargs):
    """Two epochs of ``recipe`` ("third_original" has augmentation) into ``folder``/models;
    returns the history and the FastPathWarnings issued."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = training.train_image_model(recipe, build, dataset,
                                                recipes.recipe(recipe, epochs=2),
                                                str(folder / "models"), verbose=0, **kwargs)
    return history, [str(w.message) for w in caught if w.category is training.FastPathWarning]


def saved_float32_model(folder, name="third_original"):
    """The saved model, loaded in safe mode under the float32 policy, checked to be float32
    throughout and free of augmentation."""
    keras.mixed_precision.set_global_policy("float32")
    model = artifacts.load_model(artifacts.model_path(name, folder / "models"))
    assert {w.dtype for w in model.weights} == {"float32"}
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert not any(isinstance(layer, augment.RandomAffine) for layer in model.layers)
    return model


# ---------------------------------------------------------------------------
# Part 1: automatic precision
# ---------------------------------------------------------------------------

def fake_cpuinfo(folder, flags):
    path = folder / "cpuinfo"
    path.write_text("processor\t: 0\nvendor_id\t: FakeCPU\n"
                    f"flags\t\t: fpu sse2 {' '.join(flags)}\n\nprocessor\t: 1\n")
    return str(path)


@pytest.mark.parametrize("flags, gpus, expected", [
    (["avx512f", "amx_tile", "amx_bf16"], [], "mixed_bfloat16"),
    (["avx512f", "avx512_bf16"], [], "mixed_bfloat16"),
    (["avx2", "fma"], [], "float32"),
    (["avx2"], ["GPU:0"], "mixed_float16"),
    (["amx_bf16"], ["GPU:0"], "mixed_float16"),
])
def test_auto_precision_follows_the_cpu_flags_and_gpus(tmp_path, flags, gpus, expected):
    found = hardware.cpu_flags(fake_cpuinfo(tmp_path, flags))
    assert set(flags) <= found and "fpu" in found
    assert hardware.auto_precision(gpus, found) == expected


def test_cpu_flags_of_a_machine_without_cpuinfo_is_empty(tmp_path):
    assert hardware.cpu_flags(str(tmp_path / "missing")) == set()


def test_set_up_hardware_auto_picks_bf16_on_a_bf16_cpu_without_a_global_policy(monkeypatch):
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [] if kind == "GPU" else ["CPU:0"])
    monkeypatch.setattr(hardware, "cpu_flags", lambda path="/proc/cpuinfo": {"amx_bf16"})
    setup = hardware.set_up_hardware()
    assert setup.precision == "mixed_bfloat16"
    assert "precision mixed_bfloat16" in setup.description and "amx_bf16" in setup.description
    # The precision travels with the setup; Keras' global policy is left alone.
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("flags, gpus, expected", [
    ({"avx512_bf16"}, [], "bfloat16"),
    ({"amx_bf16"}, [], "bfloat16"),
    ({"avx2", "fma"}, [], "float32"),
    ({"amx_bf16"}, ["GPU:0"], "float32"),  # a GPU predicts the whole set in float32
])
def test_inference_predicts_in_bf16_where_training_would(monkeypatch, flags, gpus, expected):
    from cifar100cnn import inference

    monkeypatch.setattr(hardware, "cpu_flags", lambda path="/proc/cpuinfo": flags)
    monkeypatch.setattr(hardware, "gpu_names", lambda: gpus)
    assert inference.resolve_precision("auto") == expected


def test_auto_precision_under_jax_is_bf16_on_gpus_and_float32_on_cpus():
    assert hardware.auto_precision(["H200"], {"amx_bf16"}, "jax") == "mixed_bfloat16"
    assert hardware.auto_precision([], {"amx_bf16"}, "jax") == "float32"
    assert hardware.auto_precision([], {"amx_bf16"}, "tensorflow") == "mixed_bfloat16"


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", None, ""])
def test_configure_hardware_refuses_a_bad_precision(bad):
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'float32'"):
        hardware.configure_hardware(precision=bad)
    assert keras.mixed_precision.global_policy().name == "float32"


# ---------------------------------------------------------------------------
# Part 2: jit_compile decided here, never Keras' "auto"
# ---------------------------------------------------------------------------

class _Replicas:
    def __init__(self, n):
        self.num_replicas_in_sync = n


def test_use_jit_is_explicit_and_auto_means_one_gpu(monkeypatch):
    assert training.use_jit(True) is True and training.use_jit(False) is False
    assert training.use_jit("auto") is False  # no GPU here
    monkeypatch.setattr(training, "gpu_names", lambda: ["Fake GPU"])
    assert training.use_jit("auto", _Replicas(1)) is True
    assert training.use_jit("auto", _Replicas(2)) is False  # keras#21366
    assert training.use_jit(False, _Replicas(1)) is False


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "True"])
def test_use_jit_refuses_anything_but_auto_true_false(bad, tmp_path, dataset):
    with pytest.raises(ValueError, match="jit_compile must be 'auto', True or False"):
        training.use_jit(bad)
    with pytest.raises(ValueError, match="jit_compile must be"):
        training.train_image_model("baseline", tiny_model, dataset, recipes.recipe("baseline"),
                                   str(tmp_path), jit_compile=bad)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------
# Part 2: each GPU-only path, forced on the CPU, ends in a float32 model
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("precision, augment_on, jit", [
    ("float32", "model", True),           # augmentation inside the model, compiled by XLA
    ("mixed_float16", "pipeline", False),  # mixed precision with loss scaling
    ("mixed_float16", "model", True),      # all of them together
])
def test_forced_gpu_path_trains_and_saves_a_float32_model(dataset, tmp_path, compiled,
                                                          precision, augment_on, jit):
    history, fallbacks = train(dataset, tmp_path, augment_on=augment_on, jit_compile=jit,
                               precision=precision)
    assert fallbacks == [] and len(history["loss"]) == 2
    trainee = compiled[-1]
    assert trainee.jit_compile is jit  # honoured although set_seed turned determinism on
    assert tf_config.is_op_determinism_enabled()  # and back on for the next CPU run
    assert isinstance(trainee.optimizer, keras.optimizers.LossScaleOptimizer) is (
        precision == "mixed_float16")
    first = trainee.layers[1]
    assert isinstance(first, augment.RandomAffine) is (augment_on == "model")
    if augment_on == "model":
        assert first.xla and first.dtype_policy.name == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"  # left as it was
    saved = saved_float32_model(tmp_path)
    assert saved.count_params() == tiny_model().count_params()


# ---------------------------------------------------------------------------
# Part 2: the fallback when the fast path fails before its first step
# ---------------------------------------------------------------------------

def rotating_model(xla_claimed):
    """A model with Keras' RandomRotation (ImageProjectiveTransformV3: no XLA kernel,
    tensorflow#100865), saying it supports XLA or not."""
    inputs = keras.Input((32, 32, 3))
    rotate = keras.layers.RandomRotation(0.1, name="rotate")
    rotate.supports_jit = xla_claimed
    model = tiny_model()
    return keras.Model(inputs, model(rotate(inputs)), name="rotating")


def test_op_without_xla_kernel_falls_back_without_xla(dataset, tmp_path, compiled):
    """A real XLA compile failure (tensorflow#100865, keras#20191) in the first step."""
    history, fallbacks = train(dataset, tmp_path, "baseline", lambda: rotating_model(True),
                               jit_compile=True, precision="mixed_float16")
    assert len(fallbacks) == 1 and "\n" not in fallbacks[0]
    assert fallbacks[0].startswith("baseline: the fast path failed before its first step "
                                   "(InvalidArgumentError: ")
    assert "ImageProjectiveTransformV3" in fallbacks[0]
    assert fallbacks[0].endswith("training again with XLA (jit_compile) turned off.")
    assert [m.jit_compile for m in compiled] == [True, False]
    assert isinstance(compiled[-1].optimizer, keras.optimizers.LossScaleOptimizer)  # kept
    assert len(history["loss"]) == 2
    saved = artifacts.load_model(artifacts.model_path("baseline", tmp_path / "models"))
    assert saved.name == "rotating"


def test_xla_asked_for_a_layer_without_kernel_is_said_not_silently_dropped(dataset, tmp_path,
                                                                             compiled):
    """tf-keras#418: Keras alone would quietly train without XLA; here it is a warning."""
    history, fallbacks = train(dataset, tmp_path, "baseline", lambda: rotating_model(False),
                               jit_compile=True)
    assert len(fallbacks) == 1 and "FastPathError" in fallbacks[0]
    assert "layer(s) ['rotate'] of 'rotating' have no XLA kernel" in fallbacks[0]
    assert [m.jit_compile for m in compiled] == [False] and len(history["loss"]) == 2


def _failing_fit(monkeypatch, errors, step_first=False):
    """``keras.Model.fit`` raises ``errors`` in turn (before any step, or after one with
    ``step_first``), then trains normally."""
    calls = []
    original = keras.Model.fit

    def fit(self, *args, **kwargs):
        calls.append(self)
        if len(calls) <= len(errors):
            if step_first:  # as if one step ran
                for callback in kwargs["callbacks"]:
                    if isinstance(callback, training.StepWatch):
                        callback.on_train_batch_begin(0)
                        callback.on_train_batch_begin(1)
            raise errors[len(calls) - 1]
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    return calls


def xla_error():
    return tf.errors.InvalidArgumentError(
        None, None, "Graph execution error:\n\nDetected at node x defined at (most recent call "
        "last):\n  File \"x.py\", line 1\nDetected unsupported operations when trying to compile "
        "graph __inference_one_step_on_data_123[_XlaMustCompile=true] on XLA_GPU_JIT: "
        "ImageProjectiveTransformV3\n\t [[{{node x}}]]")


def test_injected_failures_fall_back_step_by_step_to_the_plain_path(dataset, tmp_path,
                                                                    compiled, monkeypatch):
    calls = _failing_fit(monkeypatch, [xla_error(), RuntimeError("merge_call (keras#21366)")])
    history, fallbacks = train(dataset, tmp_path, augment_on="model", jit_compile=True,
                               precision="mixed_float16")
    assert len(calls) == 3 and len(history["loss"]) == 2
    assert fallbacks == [
        "third_original: the fast path failed before its first step (InvalidArgumentError: "
        "Detected unsupported operations when trying to compile graph on XLA_GPU_JIT: "
        "ImageProjectiveTransformV3); training again with XLA (jit_compile) turned off.",
        "third_original: the fast path failed before its first step (RuntimeError: merge_call "
        "(keras#21366)); training again with augmentation inside the model and mixed precision "
        "(mixed_float16) turned off."]
    plain = compiled[-1]
    assert plain.jit_compile is False and plain.name == "tiny"  # no augmentation wrapper
    assert not isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)
    assert {w.dtype for w in plain.weights} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # left as it was
    saved_float32_model(tmp_path)


@pytest.mark.parametrize("case", ["after the first step", "out of memory", "plain path",
                                  "a bad input"])
def test_other_failures_are_raised_without_fallback(dataset, tmp_path, monkeypatch, case):
    error = {"out of memory": tf.errors.ResourceExhaustedError(None, None, "OOM"),
             "a bad input": ValueError("bad input")}.get(case, xla_error())
    calls = _failing_fit(monkeypatch, [error], step_first=case == "after the first step")
    fast = {} if case == "plain path" else dict(augment_on="model", jit_compile=True)
    with pytest.raises(type(error)), warnings.catch_warnings():
        warnings.simplefilter("error", training.FastPathWarning)
        train(dataset, tmp_path, **fast)
    assert len(calls) == 1
    assert not os.path.exists(artifacts.model_path("third_original", tmp_path / "models"))


def test_fallback_paths_drop_xla_first_then_everything():
    fast = training.TrainingPath(True, "model", "mixed_float16")
    assert training.fallback_paths(fast) == [
        fast, training.TrainingPath(False, "model", "mixed_float16"), training.PLAIN_PATH]
    assert training.fallback_paths(training.PLAIN_PATH) == [training.PLAIN_PATH]
    bf16 = training.TrainingPath(False, "pipeline", "mixed_bfloat16")
    assert training.fallback_paths(bf16) == [bf16, training.PLAIN_PATH]
    assert training.fast_path(None, "model", True).augment_on == "pipeline"  # nothing to move


# ---------------------------------------------------------------------------
# Part 2: MirroredStrategy over two logical CPUs with every fast path asked for
# ---------------------------------------------------------------------------

_MIRRORED_FAST = textwrap.dedent("""
    import json, os, shutil, sys, tempfile, warnings
    sys.path.insert(0, {here!r})
    from cifar100cnn import hardware, training
    setup = hardware.set_up_hardware("mixed_float16", cpu_devices=2)
    strategy, text = setup.strategy, setup.description
    import keras
    from cifar100cnn import artifacts, augment, data, recipes
    from test_gpu_paths import tiny_model
    seen = []
    original = training.compile_model
    training.compile_model = lambda model, *a, **k: seen.append(original(model, *a, **k)) or model
    scratch = tempfile.mkdtemp()
    folder = os.path.join(scratch, "models")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, history = training.train_image_model("third_original", tiny_model,
                                                data.synthetic_dataset(300, 50, source="t"),
                                                recipes.recipe("third_original", epochs=2), folder,
                                                strategy=strategy, verbose=0, augment_on="model",
                                                jit_compile=True, precision=setup.precision)
    keras.mixed_precision.set_global_policy("float32")
    saved = artifacts.load_model(artifacts.model_path("third_original", folder))
    shutil.rmtree(scratch)
    trainee = seen[-1]
    print("RESULT", json.dumps({{
        "text": text, "auto_jit": training.use_jit("auto", strategy),
        "fallbacks": [str(w.message) for w in caught if w.category is training.FastPathWarning],
        "loss_scaling": isinstance(trainee.optimizer, keras.optimizers.LossScaleOptimizer),
        "augment_in_model": isinstance(trainee.layers[1], augment.RandomAffine),
        "steps_per_execution": trainee.steps_per_execution, "epochs": len(history["loss"]),
        "saved_dtypes": sorted({{w.dtype for w in saved.weights}})}}))
""")


@pytest.mark.slow
def test_mirrored_strategy_with_every_fast_path_on_two_logical_cpus(script_result):
    report = script_result(_MIRRORED_FAST.format(here=HERE), timeout=600, CUDA_VISIBLE_DEVICES="")
    assert "MirroredStrategy with 2 replica(s)" in report["text"]
    assert report["auto_jit"] is False  # "auto" keeps XLA off with several replicas
    # XLA asked for explicitly may fail across logical devices; only XLA may be dropped.
    assert all(m.endswith("with XLA (jit_compile) turned off.") for m in report["fallbacks"])
    assert report["loss_scaling"] and report["augment_in_model"]
    assert report["steps_per_execution"] == 1  # keras#19246: several fail under Mirrored
    assert report["epochs"] == 2 and report["saved_dtypes"] == ["float32"]
