"""Model files every Keras 3 release from 3.8 on reads: what save_model leaves out, what it
refuses, and what load_model says about a file too new for the installed Keras. (That the files
really open in Keras 3.8 is checked by .ci/portability, in an environment with Keras 3.8.)"""

import glob
import json
import os
import warnings
import zipfile

import keras
import numpy as np
import pytest

from cifar100cnn import artifacts, environment, portability

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = sorted(glob.glob(os.path.join(ROOT, "models", "*.keras")))


def config_of(path):
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def layer_configs(config, class_name):
    return [node["config"] for node in portability._objects(config)
            if node["class_name"] == class_name]


def small_model(**batch_norm):
    """Input, He-initialised convolution, batch normalization, dense softmax: every layer kind
    whose newer releases added arguments the committed models hold."""
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, kernel_initializer="he_normal")(x)
    x = keras.layers.BatchNormalization(**batch_norm)(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(100, activation="softmax")(x))


def images(count=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3)).astype("float32")


def test_saved_files_leave_out_what_keras_3_8_lacks_and_predict_the_same(tmp_path):
    model = small_model()
    keras.utils.set_random_seed(1)
    model.layers[3].moving_mean.assign(np.linspace(-1, 1, 4).astype("float32"))
    path = artifacts.save_model(model, tmp_path / "m.keras")
    config = config_of(path)
    assert portability.newer_features(config, "3.8") == ([], [])
    for name, keys in [("BatchNormalization", "renorm"), ("Dense", "quantization_config"),
                       ("HeNormal", "input_axes"), ("InputLayer", "ragged")]:
        assert all(keys not in settings for settings in layer_configs(config, name)), name
    x = images()
    np.testing.assert_allclose(artifacts.load_model(path)(x), model(x), atol=1e-6)


def with_newer_keys(config):
    """The configuration as the newest Keras writes it: every newer argument the tables know,
    at its feature-off value (whatever the installed Keras wrote)."""
    for node in portability._objects(config):
        for key, (neutral, _) in portability.NEWER_KEYS.get(node["class_name"], {}).items():
            node["config"].setdefault(key, neutral[0])
    return config


def test_portable_config_drops_only_feature_off_values():
    config = with_newer_keys(config_of_model(small_model()))
    newer = [(node["class_name"], key) for node in portability._objects(config)
             for key in portability.NEWER_KEYS.get(node["class_name"], {})]
    assert len(newer) >= 6  # renorm x3, quantization_config, input_axes/output_axes, ragged
    portable, changes = portability.portable_config(config)
    assert changes >= len(newer)
    assert len(portability.newer_features(config)[0]) == len(newer)  # the input is unchanged
    assert portability.newer_features(portable) == ([], [])
    # the older releases' keys are all there, unchanged
    for before, after in zip(portability._objects(config), portability._objects(portable)):
        newer = portability.NEWER_KEYS.get(before["class_name"], {})
        assert set(after["config"]) == set(before["config"]) - set(newer)
        assert all(after["config"][k] == v for k, v in before["config"].items()
                   if k not in newer and not isinstance(v, (dict, list)))
    # a release that knows everything keeps every argument
    kept = portability.portable_config(config, target="3.15")[0]
    assert portability.newer_features(kept, "3.8")[0]


def test_a_single_input_and_output_are_not_written_as_lists(tmp_path):
    """Keras 3.10-3.14 write a one-tensor model's input as ``[["image", 0, 0]]``, which plain
    Keras rebuilds with a list input (a warning at each call on an array)."""
    config = config_of_model(small_model())
    config["config"]["input_layers"] = [["image", 0, 0]]
    output = config["config"]["output_layers"]
    config["config"]["output_layers"] = output if isinstance(output[0], list) else [output]
    portable = portability.portable_config(config)[0]["config"]
    assert portable["input_layers"] == ["image", 0, 0]
    assert isinstance(portable["output_layers"][0], str)
    two = {"class_name": "Functional", "config": {"input_layers": [["a", 0, 0], ["b", 0, 0]]}}
    assert portability.portable_config(two) == (two, 0)
    path = artifacts.save_model(small_model(), tmp_path / "m.keras")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert keras.models.load_model(path, compile=False)(images()).shape == (4, 100)


def config_of_model(model):
    return json.loads(json.dumps(keras.saving.serialize_keras_object(model)))


@pytest.mark.parametrize("change, what, version", [
    (lambda c: layer_configs(c, "BatchNormalization")[0].update(renorm=True),
     "BatchNormalization(renorm=True)", "3.14"),
    (lambda c: layer_configs(c, "HeNormal")[0].update(input_axes=[0, 1]),
     "HeNormal(input_axes=[0, 1])", "3.15"),
    (lambda c: layer_configs(c, "Dense")[0].update(activation="sparse_sigmoid"),
     "activation='sparse_sigmoid'", "3.10"),
    (lambda c: next(n for n in portability._objects(c) if n["class_name"] == "GlobalMaxPooling2D")
     .update(class_name="AdaptiveMaxPooling2D"), "the AdaptiveMaxPooling2D class", "3.13"),
])
def test_a_newer_feature_in_real_use_is_refused_with_its_version(change, what, version):
    config = config_of_model(small_model())
    change(config)
    with pytest.raises(portability.PortabilityError) as caught:
        portability.portable_config(config)
    assert what in str(caught.value) and caught.value.version == version
    assert portability.portable_config(config, target=version)[0]  # fine for that release on


@pytest.mark.skipif(environment.parse_version(keras.__version__) < (3, 14),
                    reason="BatchNormalization(renorm=...) needs Keras 3.14")
def test_save_refuses_a_newer_feature_and_keeps_the_previous_file(tmp_path):
    path = tmp_path / "m.keras"
    artifacts.save_model(small_model(), path)
    before = path.read_bytes()
    with pytest.raises(artifacts.ArtifactError, match=r"renorm=True.*Keras releases from 3\.8 "
                                                      r"until 3\.14.*portable=False"):
        artifacts.save_model(small_model(renorm=True), path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.keras"]
    artifacts.save_model(small_model(renorm=True), path, portable=False)
    assert layer_configs(config_of(path), "BatchNormalization")[0]["renorm"] is True
    # what an older Keras is told: the feature in use, not the arguments left out on reading
    assert portability.required_keras(path, "3.10.0") == ("3.14", "BatchNormalization(renorm=True)")
    assert portability.required_keras(path, keras.__version__) == (None, None)


def test_save_refuses_a_class_of_its_own(tmp_path):
    @keras.saving.register_keras_serializable(package="test_portability")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalMaxPooling2D()(Twice()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(100)(x))
    with pytest.raises(artifacts.ArtifactError, match=r"classes of its own \(Twice\)"):
        artifacts.save_model(model, tmp_path / "m.keras")
    assert not os.listdir(tmp_path)


@pytest.mark.skipif(not COMMITTED, reason="no committed models in models/")
@pytest.mark.parametrize("path", COMMITTED, ids=os.path.basename)
def test_committed_models_hold_nothing_keras_3_8_lacks(path):
    droppable, used = portability.newer_features(config_of(path), portability.OLDEST_KERAS)
    assert not droppable and not used, (
        f"{os.path.basename(path)} holds {len(droppable)} arguments Keras 3.8 lacks ({used}): "
        "run portability.make_portable on it")


# ---------------------------------------------------------------------------
# Bad input: a file from a newer Keras than the installed one
# ---------------------------------------------------------------------------

def tamper(path, change, keras_version=None):
    """Rewrite a saved file's config (and the Keras version its metadata names)."""
    config = config_of(path)
    change(config)
    portability.rewrite_config(path, config)
    if keras_version:
        with zipfile.ZipFile(path) as archive:
            members = [(info, archive.read(info.filename)) for info in archive.infolist()]
        with zipfile.ZipFile(path, "w") as archive:
            for info, data in members:
                if info.filename == "metadata.json":
                    data = json.dumps({**json.loads(data), "keras_version": keras_version})
                archive.writestr(info, data)


@pytest.fixture
def future_key(monkeypatch):
    """A Dense argument as a later Keras would add it: unknown to the installed one."""
    monkeypatch.setitem(portability.NEWER_KEYS, "Dense",
                        {**portability.NEWER_KEYS["Dense"], "gated": ((False,), "3.99")})


def test_a_file_using_a_feature_of_a_newer_keras_says_which_in_one_line(tmp_path, future_key):
    path = artifacts.save_model(small_model(), tmp_path / "m.keras")
    tamper(path, lambda c: layer_configs(c, "Dense")[0].update(gated=True), "3.99.0")
    with pytest.raises(artifacts.ArtifactError) as caught:
        artifacts.load_model(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert f"needs Keras 3.99 or newer (it uses Dense(gated=True)); this is Keras " \
           f"{keras.__version__}: run `pip install -U \"keras>=3.99\"`" in message


def test_a_file_from_a_newer_keras_names_its_version_when_the_feature_is_unknown(tmp_path):
    path = artifacts.save_model(small_model(), tmp_path / "m.keras")
    tamper(path, lambda c: layer_configs(c, "Dense")[0].update(gated=True), "3.99.1")
    with pytest.raises(artifacts.ArtifactError) as caught:
        artifacts.load_model(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert "needs Keras 3.99.1 or newer (it uses a configuration written by Keras 3.99.1)" \
        in message


def test_a_newer_argument_at_its_feature_off_value_is_read_all_the_same(tmp_path, future_key):
    """A file saved as is by a newer Keras (not by this package): what the installed Keras
    lacks but changes nothing is left out on reading."""
    model = small_model()
    path = artifacts.save_model(model, tmp_path / "m.keras")
    tamper(path, lambda c: layer_configs(c, "Dense")[0].update(gated=False), "3.99.0")
    with pytest.raises(Exception, match="gated"):
        keras.models.load_model(path, compile=False)
    x = images()
    np.testing.assert_allclose(artifacts.load_model(path)(x), model(x), atol=1e-6)


def test_a_broken_file_is_told_in_one_short_line(tmp_path):
    path = artifacts.save_model(small_model(), tmp_path / "m.keras")
    tamper(path, lambda c: layer_configs(c, "Dense")[0].update(gated=True))  # an unknown key
    with pytest.raises(Exception) as raw:  # Keras' own message: the whole configuration
        keras.models.load_model(path, compile=False)
    assert len(str(raw.value)) > 1000 and "\n" in str(raw.value)
    with pytest.raises(artifacts.ArtifactError) as caught:
        artifacts.load_model(path)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    assert "is not a loadable Keras model" in message and "Re-create it" in message
    assert "Unrecognized keyword arguments passed to Dense: {'gated': True}" in message
