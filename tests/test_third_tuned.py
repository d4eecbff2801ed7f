"""The tuned third model: its whitening layer, its augmentation and its saved form."""

import numpy as np
import pytest

from cifar100cnn import artifacts, augment, models


def _images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    # Correlated channels and neighbouring pixels, as in photos, so whitening has work to do.
    base = rng.normal(size=(n, 32, 32, 1)).cumsum(axis=1).cumsum(axis=2)
    x = base + 0.3 * rng.normal(size=(n, 32, 32, 3))
    x = (x - x.min()) / (x.max() - x.min()) * 255
    return x.astype("uint8")


def _patches(images, kernel_size=2):
    x = (images.astype("float32") / 255 - np.array(models.CIFAR100_MEAN, "float32")) / np.array(
        models.CIFAR100_STD, "float32")
    rows = [x[:, i:i + 31, j:j + 31, :] for i in range(kernel_size) for j in range(kernel_size)]
    return np.stack(rows, axis=3).reshape(-1, kernel_size * kernel_size * 3)


def test_whitening_kernel_decorrelates_patches_to_unit_variance():
    images = _images()
    kernel = models.whitening_kernel(images, eps=1e-6, max_patches=10**7)
    assert kernel.shape == (2, 2, 3, 24)
    filters = kernel.reshape(12, 24)
    np.testing.assert_allclose(filters[:, 12:], -filters[:, :12])  # each filter and its negative
    responses = _patches(images) @ filters[:, :12]
    np.testing.assert_allclose(np.cov(responses, rowvar=False), np.eye(12), atol=0.05)


def test_tuned_model_holds_the_given_whitening_frozen_and_scales_its_logits():
    kernel = models.whitening_kernel(_images())
    model = models.build_third_tuned((8, 16, 32), kernel)
    whiten = model.get_layer("whiten")
    assert not whiten.trainable and whiten.trainable_weights == []
    np.testing.assert_array_equal(whiten.get_weights()[0], kernel)
    assert model.get_layer("logit_scale").scale == pytest.approx(1 / 9)
    probabilities = model.predict(_images(4), verbose=0)
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 100)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)


def test_build_third_computes_the_whitening_from_the_training_images():
    images = _images()
    model = models.build_third("tuned", whitening_images=images, widths=(8, 16, 32))
    np.testing.assert_allclose(model.get_layer("whiten").get_weights()[0],
                               models.whitening_kernel(images), rtol=1e-5)


def test_tuned_model_saved_from_mixed_bfloat16_is_float32_and_predicts_the_same(tmp_path):
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = models.build_third_tuned((8, 16, 32), models.whitening_kernel(_images()))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = artifacts.save_model(model, str(tmp_path / "third.keras"))
    loaded = artifacts.load_model(path)
    assert {w.dtype for w in loaded.weights} == {"float32"}
    x = _images(8, seed=1)
    # The trained model ran in bfloat16: about 3 significant digits.
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-3)


def test_whole_pixel_shifts_move_pixels_without_interpolation():
    # Every pixel a distinct whole number: bilinear blending would create fractions.
    image = np.arange(32 * 32 * 3, dtype="float32").reshape(1, 32, 32, 3) % 251
    batch = np.repeat(image, 200, axis=0)
    layer = augment.build_augmentation("tuned", seed=0)
    out = np.asarray(layer(batch, training=True))
    np.testing.assert_array_equal(out, np.round(out))
    shifts, matched = set(), 0
    for moved in out:
        found = set()
        for flip in (False, True):
            source = image[0, :, ::-1] if flip else image[0]
            padded = np.pad(source, ((2, 2), (2, 2), (0, 0)), mode="symmetric")
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    if np.array_equal(padded[2 + dy:34 + dy, 2 + dx:34 + dx], moved):
                        found.add((dx, dy))
        matched += bool(found)
        shifts |= found
    assert matched == len(out)  # every image is a whole-pixel shift of at most 2, maybe mirrored
    assert shifts == {(dx, dy) for dx in range(-2, 3) for dy in range(-2, 3)}
