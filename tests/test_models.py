"""The models: exact parameter counts, sizes read from their recipes, float32 outputs under
mixed precision, preprocessing, safe save/load round trips."""

import keras
import numpy as np
import pytest

from cifar100cnn import artifacts, models, recipes, transfer

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)


@pytest.mark.parametrize("build, expected", [
    (models.build_baseline, 1_870_052),
    (models.build_overfit, 1_299_364),
    (models.build_third_original, 643_492),
])
def test_original_models_have_the_original_parameter_counts(build, expected):
    assert build().count_params() == expected


def test_models_output_probabilities_from_raw_uint8_images():
    for model in (models.build_baseline(), models.build_third("tuned")):
        probabilities = np.asarray(model(IMAGES))
        assert probabilities.shape == (6, 100)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize("name, build", [
    ("baseline", models.build_baseline),
    ("overfit", models.build_overfit),
    ("third", lambda: models.build_third("tuned")),
    ("third_original", lambda: models.build_third("original")),
    ("vgg16", lambda: transfer.build_vgg16(weights=None)),
])
def test_every_model_round_trips_under_safe_mode(tmp_path, name, build):
    model = build()
    model.compile("rmsprop", "sparse_categorical_crossentropy")
    path = artifacts.model_path(name, tmp_path)
    artifacts.save_model(model, path)
    restored = keras.models.load_model(path, safe_mode=True)  # plain Keras, no custom code
    np.testing.assert_allclose(np.asarray(restored(IMAGES)), np.asarray(model(IMAGES)), atol=1e-6)
    assert not any(type(layer).__name__ == "Lambda" for layer in restored.layers)
    assert getattr(restored, "optimizer", None) is None  # saved without optimizer state


def test_saved_model_drops_mixed_precision(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build_baseline()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = artifacts.save_model(model, str(tmp_path / "m.keras"))
    restored = artifacts.load_model(path)
    assert {layer.dtype_policy.name for layer in restored.layers} == {"float32"}


def test_forward_flops_counts_conv_and_dense_multiply_adds():
    conv = 30 * 30 * 32 * (3 * 3 * 3)  # valid 3x3 conv, 32 filters, on 32x32x3
    dense = 15 * 15 * 32 * 256 + 256 * 100
    assert models.forward_flops(models.build_baseline()) == 2 * (conv + dense)


def test_forward_flops_enters_nested_models():
    base = transfer.build_vgg16_base(weights=None)
    head = transfer.build_vgg16_head(base.output_shape[1:])
    whole = transfer.assemble_vgg16(base, head)
    preprocess = 2 * 32 * 32 * 3 * 3
    assert models.forward_flops(whole) == (models.forward_flops(base) + models.forward_flops(head)
                                           + preprocess)
    assert models.forward_flops(head) == 2 * (512 * 512 + 512 * 256 + 256 * 100)
    assert 0.6e9 < models.forward_flops(base) < 0.65e9  # VGG16 at 32x32: about 313 M multiply-adds


def _conv_filters(model):
    return [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def _dropout_rates(model):
    return [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]


def test_recipe_widths_reach_the_built_tuned_model():
    recipe = recipes.recipe("third_tuned", widths=(8, 16, 32))
    for model in (models.build("third_tuned", recipe), models.build_third("tuned", recipe=recipe)):
        assert _conv_filters(model) == [models.WHITEN_FILTERS, 8, 8, 16, 16, 32, 32]
        assert model.get_layer("logits").kernel.shape == (32, 100)
    assert _conv_filters(models.build_third("tuned", widths=(4, 8, 16)))[1:] == [4, 4, 8, 8, 16, 16]


def test_default_builds_are_the_recipes_models():
    tuned = models.build("third_tuned")
    assert _conv_filters(tuned)[1::2] == list(recipes.THIRD_TUNED.widths)
    assert tuned.count_params() == 4_657_464 and _dropout_rates(tuned) == []
    resnet9 = models.build("third_resnet9")
    assert _conv_filters(resnet9)[0] == recipes.THIRD_RESNET9.width == 32
    assert _dropout_rates(resnet9) == [recipes.THIRD_RESNET9.dropout]
    assert _dropout_rates(models.build("third_original")) == [0.5] == [recipes.THIRD_ORIGINAL.dropout]
    assert models.build("baseline").count_params() == 1_870_052
    assert models.build("overfit").count_params() == 1_299_364


@pytest.mark.parametrize("name, overrides, filters, rates", [
    ("third_tuned", {"dropout": 0.3}, None, [0.3]),
    ("third_resnet9", {"width": 8, "dropout": 0.4}, [8, 16, 16, 16, 32, 64, 64, 64], [0.4]),
    ("third_original", {"dropout": 0.25}, [32, 64, 128], [0.25]),
])
def test_every_size_field_of_a_recipe_reaches_its_model(name, overrides, filters, rates):
    model = models.build(name, recipes.recipe(name, **overrides))
    assert _dropout_rates(model) == rates
    if filters:
        assert _conv_filters(model) == filters


@pytest.mark.parametrize("name, overrides", [
    ("baseline", {"widths": (8, 16, 32)}), ("overfit", {"dropout": 0.3}),
    ("third_original", {"width": 8}), ("third_tuned", {"width": 8}),
    ("third_resnet9", {"widths": (8, 16, 32)}),
])
def test_a_size_the_model_cannot_take_is_refused_not_ignored(name, overrides):
    with pytest.raises(ValueError, match=f"the {name} model has no use for the recipe's"):
        models.build(name, recipes.recipe(name, **overrides))
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        models.build("vgg16")


def test_tuned_model_constants_are_the_named_ones():
    model = models.build("third_tuned", recipes.recipe("third_tuned", widths=(4, 8, 16)))
    assert model.get_layer("logit_scale").scale == pytest.approx(models.LOGIT_SCALE) == 1 / 9
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(norms) == 6
    assert {(n.momentum, n.epsilon) for n in norms} == {(models.BN_MOMENTUM, models.BN_EPSILON)}
    assert (models.BN_MOMENTUM, models.BN_EPSILON) == (0.9, 1e-5)
    whiten = model.get_layer("whiten")
    assert whiten.kernel.shape == (2, 2, 3, 24) and not whiten.trainable


ALL_MODELS = {
    "baseline": lambda: models.build("baseline"),
    "overfit": lambda: models.build("overfit"),
    "third_original": lambda: models.build("third_original"),
    "third_tuned": lambda: models.build("third_tuned", recipes.recipe("third_tuned", widths=(4, 8, 16))),
    "third_resnet9": lambda: models.build("third_resnet9", recipes.recipe("third_resnet9", width=4)),
    "vgg16": lambda: transfer.build_vgg16(weights=None),
}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(ALL_MODELS))
def test_every_model_outputs_float32_probabilities_under_mixed_precision(policy, name):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = ALL_MODELS[name]()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    computing = {layer.compute_dtype for layer in model.layers if layer.weights}
    assert computing & {"float16", "bfloat16"}  # the policy did take effect inside
    assert model.outputs[0].dtype == "float32"
    probabilities = model(IMAGES)
    assert keras.backend.standardize_dtype(probabilities.dtype) == "float32"
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, atol=1e-3)


@pytest.mark.parametrize("name, recipe", [
    ("third_tuned", recipes.recipe("third_tuned", widths=(4, 8, 16))),
    ("third_resnet9", recipes.recipe("third_resnet9", width=4)),
])
def test_standardization_uses_the_cifar100_channel_mean_and_std(name, recipe):
    layer = models.build(name, recipe).get_layer("standardize")
    pixels = IMAGES.astype("float32")
    expected = (pixels / 255 - np.array([0.5071, 0.4865, 0.4409])) / np.array([0.2673, 0.2564, 0.2762])
    np.testing.assert_allclose(np.asarray(layer(pixels)), expected, rtol=1e-4, atol=1e-4)


def test_third_models_end_with_global_max_pooling_as_documented():
    """Pooling has no weights, so the parameter counts alone would not notice another kind."""
    resnet9 = models.build("third_resnet9")
    assert resnet9.count_params() == 1_671_492
    assert [type(layer).__name__ for layer in resnet9.layers][-3:] == [
        "GlobalMaxPooling2D", "Dropout", "Dense"]
    tuned = models.build("third_tuned", recipes.recipe("third_tuned", widths=(4, 8, 16)))
    assert [type(layer).__name__ for layer in tuned.layers][-4:] == [
        "GlobalMaxPooling2D", "Dense", "Rescaling", "Activation"]
