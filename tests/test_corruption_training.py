"""Corruption augmentation (augment.RandomCorruption, the presets in augment.CORRUPTIONS) and
the recipe fields that ask for it and for a gentler whitening: each change does what its
docstring says, and a recipe's ``corruption`` and ``whiten_eps`` reach what is trained."""

import keras
import numpy as np
import pytest

from cifar100cnn import augment, models, recipes, training

# Smooth colour images with room on both sides of every pixel value, so that clipping to
# [0, 255] does not hide what a change did.
_COARSE = np.random.default_rng(0).uniform(60, 196, (64, 4, 4, 3))
IMAGES = np.repeat(np.repeat(_COARSE, 8, axis=1), 8, axis=2).astype("float32")


def _corrupt(seed=0, **kwargs):
    return np.asarray(augment.RandomCorruption(seed=seed, **kwargs)(IMAGES, training=True))


def test_nothing_changes_outside_training_or_with_every_probability_zero():
    layer = augment.RandomCorruption(noise=1.0, blur=1.0, contrast=1.0, seed=0)
    np.testing.assert_array_equal(np.asarray(layer(IMAGES, training=False)), IMAGES)
    np.testing.assert_allclose(_corrupt(), IMAGES, atol=1e-4)


def test_noise_has_a_random_strength_per_image_up_to_its_limit():
    out = _corrupt(noise=1.0, noise_std=0.1)
    stds = (out - IMAGES).std(axis=(1, 2, 3))
    assert 0.0 <= out.min() and out.max() <= 255.0
    assert stds.max() <= 0.1 * 255 * 1.05  # std ~ U(0, 10 % of full scale) per image
    assert stds.max() > 0.6 * 0.1 * 255 and stds.min() < 0.4 * 0.1 * 255
    assert abs(float((out - IMAGES).mean())) < 0.5  # zero-mean


def test_each_change_happens_with_its_probability():
    changed = np.abs(_corrupt(noise=0.25) - IMAGES).max(axis=(1, 2, 3)) > 1e-3
    assert 0.1 < changed.mean() < 0.45  # 25 % of 64 images: 16 expected
    assert not np.array_equal(_corrupt(noise=0.25, seed=0), _corrupt(noise=0.25, seed=1))
    np.testing.assert_array_equal(_corrupt(noise=0.25, seed=3), _corrupt(noise=0.25, seed=3))


def test_blur_smooths_and_contrast_pulls_towards_the_image_mean():
    def roughness(x):
        return np.abs(np.diff(x, axis=2)).mean()

    blurred = _corrupt(blur=1.0)
    assert roughness(blurred) < roughness(IMAGES)
    np.testing.assert_allclose(blurred.mean(axis=(1, 2, 3)), IMAGES.mean(axis=(1, 2, 3)), rtol=0.02)
    faded = _corrupt(contrast=1.0, contrast_low=0.2)
    spread, before = faded.std(axis=(1, 2, 3)), IMAGES.std(axis=(1, 2, 3))
    assert np.all(spread <= before + 1e-3) and np.all(spread >= 0.2 * before - 1e-3)
    np.testing.assert_allclose(faded.mean(axis=(1, 2, 3)), IMAGES.mean(axis=(1, 2, 3)), rtol=1e-4)


def test_presets_build_and_an_unknown_one_is_refused():
    layer = augment.build_corruption("noise25", seed=5)
    assert (layer.noise, layer.blur, layer.contrast, layer.seed) == (0.25, 0.0, 0.0, 5)
    assert layer.dtype_policy.compute_dtype == "float32"
    with pytest.raises(ValueError, match="unknown corruption 'noisy'"):
        augment.build_corruption("noisy")


@pytest.mark.parametrize("augment_on", ["pipeline", "model"])
def test_corruption_always_trains_inside_the_model_after_the_geometry(augment_on):
    model = models.build_baseline()
    trainee = augment.model_to_train(model, "tuned", 0, augment_on, corruption="mixed")
    front = trainee.layers[1]
    steps = front.layers if isinstance(front, keras.Sequential) else [front]
    kinds = [type(step).__name__ for step in steps]
    assert kinds == (["RandomCorruption"] if augment_on == "pipeline" else ["RandomAffine", "RandomCorruption"])
    assert (steps[-1].noise, steps[-1].blur, steps[-1].contrast) == (0.5, 0.3, 0.3)
    assert trainee.layers[2] is model
    assert augment.model_to_train(model, "tuned", 0, "pipeline", corruption=None) is model


def test_a_recipes_corruption_reaches_the_model_being_trained(monkeypatch, tiny_dataset, small_model):
    trained = []
    monkeypatch.setattr(training, "fit", lambda trainee, *args, **kwargs: trained.append(trainee) or {})
    recipe = recipes.recipe("baseline", epochs=1, batch_size=64, corruption="noise25")
    training.fit_on_images(small_model, tiny_dataset(n_train=128, n_test=10), recipe, "unused",
                           augment_on="pipeline", verbose=0)
    corruption = trained[0].layers[1]
    assert isinstance(corruption, augment.RandomCorruption) and corruption.noise == 0.25


def test_a_recipes_whitening_eps_reaches_the_whitening_layer():
    from scipy.ndimage import zoom

    # Smooth images, as photos are: their faintest patch components are far below 0.05.
    coarse = np.random.default_rng(0).uniform(0, 255, (50, 8, 8, 3))
    images = np.clip(zoom(coarse, (1, 4, 4, 1), order=1), 0, 255).astype(np.uint8)
    gentle = recipes.recipe("third_tuned", widths=(4, 8, 16), whiten_eps=0.05)
    kernel = models.build("third_tuned", gentle, whitening_images=images).get_layer("whiten").kernel
    np.testing.assert_allclose(np.asarray(kernel), models.whitening_kernel(images, eps=0.05), rtol=1e-6)
    default = models.build("third_tuned", recipes.recipe("third_tuned", widths=(4, 8, 16)),
                           whitening_images=images).get_layer("whiten").kernel
    # A larger eps lowers the gain on the weakest components: the largest filter weights shrink.
    assert np.abs(np.asarray(kernel)).max() < 0.5 * np.abs(np.asarray(default)).max()
    with pytest.raises(ValueError, match=r"no use for the recipe's \['whiten_eps'\]"):
        models.build("third_resnet9", recipes.recipe("third_resnet9", whiten_eps=0.05))
