"""Corruption augmentation (augment.RandomCorruption, the presets in augment.CORRUPTIONS) and
the recipe fields that ask for it and for a gentler whitening: each change does what its
docstring says, and a recipe's ``corruption`` and ``whiten_eps`` reach what is trained."""

import dataclasses

import keras
import numpy as np
import pytest

from cifar100cnn import augment, models, recipes, training

# Geometry in tf.data (augment_on="pipeline") exists under TensorFlow alone.
needs_tf = pytest.mark.skipif(keras.config.backend() != "tensorflow",
                              reason="tf.data augmentation: TensorFlow only")

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


@pytest.mark.parametrize("augment_on", [pytest.param("pipeline", marks=needs_tf), "model"])
def test_corruption_always_trains_inside_the_model_after_the_geometry(augment_on):
    model = models.build_baseline()
    trainee = augment.model_to_train(model, "tuned", 0, augment_on, corruption="mixed")
    front = trainee.layers[1]
    steps = front.layers if isinstance(front, keras.Sequential) else [front]
    kinds = [type(step).__name__ for step in steps]
    assert kinds == (["RandomCorruption"] if augment_on == "pipeline" else ["RandomAffine", "RandomCorruption"])
    assert (steps[-1].noise, steps[-1].blur, steps[-1].contrast) == (0.5, 0.3, 0.3)
    assert trainee.layers[2] is model
    if augment_on == "pipeline":
        assert augment.model_to_train(model, "tuned", 0, "pipeline", corruption=None) is model


@needs_tf
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


def _frozen_dense(seed=0):
    """A model that noise moves visibly (every pixel weighs on every logit)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(32, 32, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    init = keras.initializers.RandomNormal(stddev=0.5, seed=seed)
    return keras.Model(inputs, keras.layers.Dense(100, activation="softmax", kernel_initializer=init)(x))


def test_the_last_clean_epochs_train_on_the_images_themselves(tiny_dataset, tmp_path):
    # Learning rate 0: the weights never move, so each epoch's training loss is that of the
    # images the training step saw: corrupted for the first two epochs, clean for the last.
    # Black images give every image logits of 0 (a loss of ln 100); noise scatters them,
    # which raises the mean cross-entropy.
    data = dataclasses.replace(tiny_dataset(n_train=320, n_test=10))
    data.x_train = np.zeros_like(data.x_train)
    recipe = recipes.recipe("baseline", epochs=3, batch_size=64, learning_rate=0.0,
                            corruption="noise", clean_epochs=1)
    model, history = training.fit_on_images(_frozen_dense, data, recipe, str(tmp_path), verbose=0)
    losses = history.history["loss"] if hasattr(history, "history") else history["loss"]
    model.compile(loss="sparse_categorical_crossentropy")
    clean = model.evaluate(data.x_train, data.y_train, batch_size=64, verbose=0)
    np.testing.assert_allclose(losses[2], clean, rtol=1e-4)
    assert losses[0] > clean + 0.1 and losses[1] > clean + 0.1


def test_clean_epochs_are_counted_from_the_end_and_must_leave_one_corrupted_epoch():
    [switch] = augment.corruption_callbacks(recipes.recipe("third_tuned", corruption="noise25", clean_epochs=2))
    assert switch.first == 14  # epochs 15 and 16 (counted from 1) are clean
    assert augment.corruption_callbacks(recipes.recipe("third_tuned", corruption="noise25")) == []
    assert augment.corruption_callbacks(recipes.recipe("third_tuned", clean_epochs=2)) == []
    with pytest.raises(ValueError, match=r"clean_epochs must be an integer from 0 to epochs - 1 \(15\), got 16"):
        recipes.recipe("third_tuned", corruption="noise25", clean_epochs=16)
    with pytest.raises(ValueError, match="clean_epochs must be an integer"):
        recipes.recipe("third_tuned", clean_epochs=-1)


def test_switching_the_corruption_off_gives_back_the_images_exactly():
    layer = augment.RandomCorruption(noise=1.0, blur=1.0, contrast=1.0, seed=0)
    switch = augment.CorruptionOff(first=1)
    switch.set_model(keras.Sequential([keras.Input((32, 32, 3)), keras.Sequential([layer])]))
    switch.on_epoch_begin(0)
    assert np.abs(np.asarray(layer(IMAGES, training=True)) - IMAGES).max() > 10
    switch.on_epoch_begin(1)
    np.testing.assert_array_equal(np.asarray(layer(IMAGES, training=True)), IMAGES)
    switch.on_epoch_begin(0)  # a run resumed before the switch point: on again
    assert float(np.asarray(layer.active)) == 1.0
