"""The four models: exact parameter counts, preprocessing, safe save/load round trips."""

import keras
import numpy as np
import pytest

from cifar100cnn import artifacts, augment, inference, models, transfer

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)


@pytest.mark.parametrize("build, expected", [
    (models.build_baseline, 1_870_052),
    (models.build_overfit, 1_299_364),
    (models.build_third_original, 643_492),
])
def test_original_models_have_the_original_parameter_counts(build, expected):
    assert build().count_params() == expected


def test_vgg16_parts_have_the_original_parameter_counts():
    base = transfer.build_vgg16_base(weights=None)
    head = transfer.build_vgg16_head(base.output_shape[1:])
    assert base.count_params() == transfer.VGG16_BASE_PARAMS == 14_714_688
    assert head.count_params() == 419_684
    model = transfer.assemble_vgg16(base, head)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 419_684  # base and preprocessing stay frozen


def test_vgg16_preprocessing_equals_keras_preprocess_input():
    images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    ours = np.asarray(transfer.vgg16_preprocessing()(images))
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-4)


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


def test_cached_feature_head_equals_assembled_model():
    base = transfer.build_vgg16_base(weights=None)
    head = transfer.build_vgg16_head(base.output_shape[1:])
    features = inference.predict_in_batches(transfer.vgg16_feature_extractor(base), IMAGES, batch_size=4)
    from_features = np.asarray(head(features))
    assembled = np.asarray(transfer.assemble_vgg16(base, head)(IMAGES))
    np.testing.assert_allclose(assembled, from_features, rtol=1e-4, atol=1e-6)


def test_upscaled_vgg16_takes_32px_images_and_sees_them_resized():
    base = transfer.build_vgg16_base(weights=None, input_size=64)
    assert base.output_shape[1:] == (2, 2, 512) and base.count_params() == 14_714_688
    head = transfer.build_vgg16_head(base.output_shape[1:])
    assert head.count_params() == 2048 * 512 + 512 + 512 * 256 + 256 + 256 * 100 + 100
    model = transfer.assemble_vgg16(base, head)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 100)
    features = inference.predict_in_batches(transfer.vgg16_feature_extractor(base), IMAGES, batch_size=4)
    resized = keras.ops.image.resize(IMAGES.astype("float32"), (64, 64), interpolation="bilinear")
    expected = np.asarray(base(transfer.vgg16_preprocessing()(resized)))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(IMAGES)), np.asarray(head(features)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [31, 225, 64.5, "96"])
def test_bad_vgg16_input_sizes_are_refused(size):
    with pytest.raises(ValueError, match="input size"):
        transfer.build_vgg16_base(weights=None, input_size=size)


def _affine(images, angle=0.0, shift_x=0.0, shift_y=0.0, flip_x=1.0, flip_y=1.0):
    row = [np.array([value], "float32") for value in (angle, shift_x, shift_y, flip_x, flip_y)]
    transforms = augment.affine_transforms(*row, 32, 32)
    return np.asarray(keras.ops.image.affine_transform(images, transforms, fill_mode="nearest"))


def test_affine_transforms_match_numpy_rotations_flips_and_shifts():
    image = IMAGES[:1].astype("float32")
    np.testing.assert_allclose(_affine(image), image, atol=1e-3)
    np.testing.assert_allclose(_affine(image, flip_x=-1.0), image[:, :, ::-1], atol=1e-3)
    np.testing.assert_allclose(_affine(image, flip_y=-1.0), image[:, ::-1], atol=1e-3)
    np.testing.assert_allclose(_affine(image, angle=np.pi / 2)[0], np.rot90(image[0]), atol=1e-2)
    shifted = _affine(image, shift_x=3.0)
    np.testing.assert_allclose(shifted[:, :, :-3], image[:, :, 3:], atol=1e-3)
    np.testing.assert_allclose(shifted[:, :, -3:], np.repeat(image[:, :, -1:], 3, axis=2), atol=1e-3)


@pytest.mark.parametrize("fill_mode, degrees, shift", [("nearest", 40, 0.2), ("reflect", 0, 0.125),
                                                       ("reflect", 90, 0.9), ("nearest", 180, 1.5)])
def test_resample_affine_equals_tensorflows_affine_transform(fill_mode, degrees, shift):
    rng = np.random.default_rng(degrees)
    images = rng.integers(0, 256, (32, 32, 32, 3)).astype("float32")

    def uniform(limit):
        return rng.uniform(-limit, limit, len(images)).astype("float32")

    def flips():
        return rng.choice([-1.0, 1.0], len(images)).astype("float32")

    transforms = augment.affine_transforms(uniform(np.radians(degrees)), uniform(shift * 32),
                                          uniform(shift * 32), flips(), flips(), 32, 32)
    expected = np.asarray(keras.ops.image.affine_transform(images, transforms, fill_mode=fill_mode))
    np.testing.assert_allclose(np.asarray(augment.resample_affine(images, transforms, fill_mode)),
                               expected, atol=0.01)  # pixel values 0-255


def test_resample_affine_compiles_with_xla():
    import tensorflow as tf

    images = IMAGES.astype("float32")
    transforms = augment.affine_transforms(*(np.full(len(images), v, "float32")
                                            for v in (0.3, 2.5, -1.5, -1.0, 1.0)), 32, 32)
    compiled = tf.function(lambda x, t: augment.resample_affine(x, t, "reflect"), jit_compile=True)
    np.testing.assert_allclose(np.asarray(compiled(images, transforms)),
                               np.asarray(augment.resample_affine(images, transforms, "reflect")),
                               atol=0.01)
    assert augment.build_augmentation("tuned", xla=True).supports_jit
    assert not augment.build_augmentation("tuned").supports_jit  # TensorFlow's kernel: no XLA


@pytest.mark.parametrize("kind", ["original", "tuned"])
def test_both_resamplers_give_the_same_augmentation(kind):
    images = IMAGES.astype("float32")
    kernel = augment.build_augmentation(kind, seed=5)(images, training=True)
    gathers = augment.build_augmentation(kind, seed=5, xla=True)(images, training=True)
    np.testing.assert_allclose(np.asarray(gathers), np.asarray(kernel), atol=0.01)


def test_resample_affine_refuses_other_fill_modes():
    with pytest.raises(ValueError, match="fill_mode"):
        augment.resample_affine(IMAGES.astype("float32"), np.zeros((len(IMAGES), 8), "float32"),
                               "wrap")


def _principal_angle(channel):
    """The angle (degrees, in -90..90) of the long axis of the lit pixels of one channel."""
    rows, cols = np.indices(channel.shape)
    weights = channel / channel.sum()
    my, mx = (weights * rows).sum(), (weights * cols).sum()
    cyy, cxx = (weights * (rows - my) ** 2).sum(), (weights * (cols - mx) ** 2).sum()
    cxy = (weights * (rows - my) * (cols - mx)).sum()
    return np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy))


def test_original_augmentation_rotates_up_to_40_degrees_and_flips_vertically_only():
    """The original's ImageDataGenerator(rotation_range=40, vertical_flip=True, shifts 0.2), seen
    on an asymmetric pattern. Channel 0: the top half lit; whatever the rotation (<= 40 deg) and
    shift (<= 6.4 px), the top-centre pixel reads from the top half unless the image is flipped
    vertically. Channel 1: a horizontal bar through the centre, away from the edges: only a
    rotation tilts it. Channel 2: the left half lit; the left-centre pixel stays lit unless the
    image is flipped horizontally, which the original never does."""
    image = np.zeros((300, 32, 32, 3), "float32")
    image[:, :16, :, 0] = 255
    image[:, 15:17, 4:28, 1] = 255
    image[:, :, :16, 2] = 255
    out = np.asarray(augment.build_augmentation("original", seed=3)(image, training=True))
    top_centre = out[:, 0, 15:17, 0].mean(axis=1)
    assert np.all((top_centre < 1) | (top_centre > 254))
    assert 0.35 < (top_centre < 1).mean() < 0.65  # flipped upside down half of the time
    angles = np.abs([_principal_angle(picture[..., 1]) for picture in out])
    assert angles.max() < 42  # rotations within +-40 degrees ...
    assert angles.max() > 35 and (angles > 10).mean() > 0.6  # ... drawn over the whole range
    assert np.all(out[:, 15:17, 0, 2] > 254)  # never mirrored left-right


def test_original_augmentation_shifts_by_at_most_a_fifth_of_the_side():
    # One bright pixel at the centre stays near the centre (rotation about the centre), moves by
    # at most 0.2 x 32 = 6.4 px and, over many draws, lands on both sides (shifts are symmetric).
    image = np.zeros((200, 32, 32, 3), "float32")
    image[:, 15:17, 15:17] = 255
    layer = augment.build_augmentation("original", seed=3)
    out = np.asarray(layer(image, training=True))[..., 0]
    rows = np.array([np.unravel_index(np.argmax(o), o.shape)[0] for o in out])
    assert np.all(np.abs(rows - 15.5) <= 8)
    assert (rows < 14).any() and (rows > 17).any()
    assert np.array_equal(np.asarray(layer(image, training=False)), image)


def test_augmentations_keep_the_shape_and_change_the_images():
    # (Unknown names: test_reliability.py::test_unknown_presets_are_refused_naming_the_known_ones.)
    batch = IMAGES.astype("float32")
    for kind in augment.AUGMENTATIONS:
        augmented = np.asarray(augment.build_augmentation(kind)(batch, training=True))
        assert augmented.shape == batch.shape
        assert not np.allclose(augmented, batch)
    assert augment.build_augmentation(None) is None


def test_offline_imagenet_weights_give_instructions(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: [Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(transfer.WeightsUnavailableError, match="VGG16_WEIGHTS"):
        transfer.build_vgg16_base("imagenet")


def test_weights_file_is_read_and_the_environment_is_not(tmp_path, monkeypatch):
    weights_file = tmp_path / "vgg16_notop.weights.h5"
    transfer.build_vgg16_base(weights=None).save_weights(weights_file)
    base = transfer.build_vgg16_base(str(weights_file))
    assert base.count_params() == 14_714_688
    with pytest.raises(transfer.WeightsUnavailableError, match="not found"):
        transfer.build_vgg16_base(str(tmp_path / "missing.h5"))
    # $VGG16_WEIGHTS is for the notebooks and the CLI (environment.vgg16_weights).
    monkeypatch.setenv("VGG16_WEIGHTS", str(weights_file))
    assert transfer.resolve_vgg16_weights("imagenet") == "imagenet"


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
