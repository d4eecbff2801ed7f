"""The tuned network's per-image standardization (recipe field ``input_norm="image"``): each
image by its own mean and standard deviation, so a contrast change or a brightness shift leaves
the prediction unchanged; the whitening computed the same way; saved without custom code."""

import numpy as np
import pytest

from cifar100cnn import artifacts, models, recipes

WIDTHS = (8, 16, 32)


def _images(n=48, seed=0, contrast=(10, 40)):
    rng = np.random.default_rng(seed)
    # Neighbouring pixels correlated, and each image with its own contrast and brightness.
    base = rng.normal(size=(n, 32, 32, 1)).cumsum(axis=1).cumsum(axis=2)
    x = base + 0.3 * rng.normal(size=(n, 32, 32, 3))
    x = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    x = 128 + x * rng.uniform(*contrast, (n, 1, 1, 1)) + rng.uniform(-40, 40, (n, 1, 1, 1))
    return np.clip(x, 0, 255).astype("uint8")


def _standardized(images):
    flat = images.reshape(len(images), -1).astype("float64")
    mean, std = flat.mean(axis=1), flat.std(axis=1)
    return (images - mean[:, None, None, None]) / np.sqrt(std ** 2 + models.IMAGE_NORM_EPSILON)[:, None, None, None]


def _model(images, input_norm="image"):
    recipe = recipes.recipe("third_tuned", widths=WIDTHS, input_norm=input_norm)
    return models.build("third_tuned", recipe, whitening_images=images)


def test_the_first_layer_standardizes_each_image_by_its_own_statistics():
    import keras

    images = _images(6)
    model = _model(images)
    first = keras.Model(model.input, model.get_layer("standardize_image").output)
    np.testing.assert_allclose(first.predict(images, verbose=0), _standardized(images), atol=1e-4)


def test_the_whitening_decorrelates_patches_of_per_image_standardized_images():
    # Faint images too, whose standard deviation is near the layer's epsilon: it counts.
    images = _images(contrast=(1.5, 40))
    kernel = models.whitening_kernel(images, eps=1e-6, max_patches=10**7, input_norm="image")
    x = _standardized(images)
    patches = np.stack([x[:, i:i + 31, j:j + 31, :] for i in range(2) for j in range(2)],
                       axis=3).reshape(-1, 12)
    responses = patches @ kernel.reshape(12, 24)[:, :12]
    np.testing.assert_allclose(np.cov(responses, rowvar=False), np.eye(12), atol=0.05)
    # Differs from the kernel for dataset statistics: these images' contrasts vary widely.
    assert not np.allclose(kernel, models.whitening_kernel(images, eps=1e-6, max_patches=10**7),
                           atol=0.05)


def test_the_recipe_builds_a_model_whose_whitening_is_per_image():
    images = _images()
    model = _model(images)
    np.testing.assert_allclose(model.get_layer("whiten").get_weights()[0],
                               models.whitening_kernel(images, input_norm="image"), rtol=1e-5)
    names = [layer.name for layer in model.layers]
    assert "standardize_image" in names and "standardize" not in names


def test_contrast_and_brightness_leave_the_prediction_unchanged_only_with_per_image_input_norm():
    images = _images(8)
    x = images.astype("float32")
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    # Contrast scaled by 0.4 about the mean, then brightened by 20 (no clipping at these values).
    changed = (x - mean) * 0.4 + mean + 20
    assert changed.min() >= 0 and changed.max() <= 255
    per_image, per_dataset = _model(images), _model(images, "dataset")
    np.testing.assert_allclose(per_image.predict(changed, verbose=0),
                               per_image.predict(x, verbose=0), atol=2e-4)
    assert np.abs(per_dataset.predict(changed, verbose=0) - per_dataset.predict(x, verbose=0)).max() > 1e-3


def test_a_saved_per_image_model_loads_and_predicts_the_same(tmp_path):
    images = _images(8)
    model = _model(images)
    path = artifacts.save_model(model, str(tmp_path / "third.keras"))
    np.testing.assert_allclose(artifacts.load_model(path).predict(images, verbose=0),
                               model.predict(images, verbose=0), atol=1e-6)


def test_an_unknown_input_norm_or_one_the_model_cannot_read_is_refused():
    with pytest.raises(ValueError, match=r"unknown input_norm 'pixel'; expected one of \('dataset', 'image'\)"):
        recipes.recipe("third_tuned", input_norm="pixel")
    with pytest.raises(ValueError, match=r"no use for the recipe's \['input_norm'\]"):
        models.build("third_resnet9", recipes.recipe("third_resnet9", input_norm="image"))
