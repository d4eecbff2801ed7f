"""Training loop, reuse of finished models, synthetic learnability, keras-tuner search."""

import json
import os

import keras
import numpy as np
import pytest

from cifar100cnn import artifacts, augment, data, inputs, models, recipes, training, transfer, tuning

# Augmentation in tf.data, and tf.function, exist under TensorFlow alone.
needs_tf = pytest.mark.skipif(keras.config.backend() != "tensorflow",
                              reason="tf.data augmentation / tf.function: TensorFlow only")


def small_dataset(n_train=1000, n_test=200, seed=0):
    return data.synthetic_dataset(n_train, n_test, seed=seed)


def test_as_history_orders_epochs_numerically():
    log = {"10": {"loss": 0.1}, "2": {"loss": 0.5}, "0": {"loss": 0.9, "accuracy": 0.3}}
    assert training.as_history(log) == {"loss": [0.9, 0.5, 0.1], "accuracy": [0.3, None, None]}


@pytest.mark.slow
def test_a_cnn_learns_the_synthetic_data_far_above_chance(tmp_path):
    dataset = small_dataset(6000, 1000, seed=1)
    model, history = training.train_image_model("overfit", models.build_overfit, dataset,
                                                recipes.recipe("overfit", epochs=5), str(tmp_path),
                                                verbose=0)
    accuracy = float((model.predict(dataset.x_test, verbose=0).argmax(1) == dataset.y_test).mean())
    assert accuracy > 0.10, accuracy  # chance is 0.01
    assert len(history["val_accuracy"]) == 5
    # the saved model holds the best validation epoch
    saved = artifacts.load_model(artifacts.model_path("overfit", tmp_path))
    val_accuracy = float((saved.predict(dataset.x_val, verbose=0).argmax(1) == dataset.y_val).mean())
    assert val_accuracy == pytest.approx(max(history["val_accuracy"]), abs=1e-6)


@pytest.mark.slow
def test_vgg16_pipeline_saves_one_model_from_raw_images(tmp_path):
    dataset = small_dataset(200, 20)
    model, history = transfer.train_vgg16(dataset, recipes.recipe("vgg16", epochs=1), weights=None,
                                          models_dir=str(tmp_path), verbose=0)
    saved = artifacts.load_model(artifacts.model_path("vgg16", tmp_path))
    assert saved.count_params() == model.count_params()
    np.testing.assert_allclose(saved.predict(dataset.x_test, verbose=0),
                               model.predict(dataset.x_test, verbose=0), atol=1e-5)
    assert len(history["val_accuracy"]) == 1


@pytest.mark.slow
def test_vgg16_finetuning_trains_block5_only(tmp_path):
    dataset = small_dataset(200, 20)
    model, history = transfer.train_vgg16(dataset, recipes.recipe("vgg16", epochs=1),
                                          recipes.recipe("vgg16_finetune", epochs=1), weights=None,
                                          models_dir=str(tmp_path), verbose=0)
    base = model.get_layer("vgg16")
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}
    assert len(history["val_accuracy"]) == 2  # one head epoch + one fine-tuning epoch
    assert artifacts.load_model(artifacts.model_path("vgg16", tmp_path)).count_params() == 15_134_384


@pytest.mark.slow
def test_upscaled_vgg16_finetunes_saves_and_is_reused(tmp_path, capsys):
    dataset = small_dataset(100, 10)
    model, history = transfer.train_vgg16(dataset, recipes.recipe("vgg16", epochs=1, input_size=64),
                                          recipes.recipe("vgg16_finetune", epochs=1), weights=None,
                                          models_dir=str(tmp_path), verbose=0)
    assert len(history["val_accuracy"]) == 2
    checkpoints = tmp_path / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["vgg16_64px", "vgg16_finetune_64px"]
    # Finished: nothing a later retrain could resume from.
    assert not [name for folder in checkpoints.iterdir() for name in os.listdir(folder)]
    saved = artifacts.load_model(artifacts.model_path("vgg16", tmp_path))
    assert saved.get_layer("vgg16").input_shape[1:] == (64, 64, 3)
    np.testing.assert_allclose(saved.predict(dataset.x_test, verbose=0),
                               model.predict(dataset.x_test, verbose=0), atol=1e-5)
    reused, _ = transfer.train_vgg16(dataset, recipes.recipe("vgg16", epochs=1, input_size=64),
                                     weights=None, models_dir=str(tmp_path))
    assert reused.get_layer("vgg16").input_shape[1:] == (64, 64, 3)
    assert "Reusing" in capsys.readouterr().out
    with pytest.raises(training.NotTheModelAskedFor, match="sees 64x64 inputs, not the 32x32"):
        transfer.train_vgg16(dataset, recipes.recipe("vgg16", epochs=1), weights=None,
                             models_dir=str(tmp_path))


@pytest.mark.slow
def test_tuner_search_stores_trials_ranked_by_validation_accuracy(tmp_path):
    dataset = small_dataset(300, 20)
    results_path = str(tmp_path / "search.json")
    # Hyperband would train 6 models for 3 epochs at most; the budget stops it after 2.
    best, trials = tuning.search_third(dataset, max_epochs=3, budget_trials=2,
                                       directory=str(tmp_path / "tuner"), results_path=results_path,
                                       verbose=0, widths=(8,))
    assert len(trials) == 2 and len(list((tmp_path / "tuner" / "third_model").glob("trial_*"))) == 2
    assert best["preset"] in ("tuned", "original")
    scores = [trial["val_accuracy"] for trial in trials]
    assert scores == sorted(scores, reverse=True)
    with open(results_path) as handle:
        assert len(json.load(handle)) == len(trials)


@needs_tf
@pytest.mark.parametrize("place, expected", [("model", True), ("pipeline", False)])
def test_augment_in_model_follows_an_explicit_choice(place, expected):
    assert augment.augment_in_model(place) is expected


@needs_tf
def test_augment_in_model_auto_means_inside_the_step_only_on_a_gpu():
    import tensorflow as tf
    assert augment.augment_in_model("auto") is bool(tf.config.list_physical_devices("GPU"))


@needs_tf
def test_augmentation_goes_either_to_the_pipeline_or_to_the_model():
    model = models.build_baseline()
    assert augment.pipeline_augmentation("tuned", 0, "pipeline") is not None
    assert augment.model_to_train(model, "tuned", 0, "pipeline") is model
    assert augment.pipeline_augmentation("tuned", 0, "model") is None
    trainee = augment.model_to_train(model, "tuned", 0, "model")
    assert trainee.layers[1].xla and trainee.layers[2] is model
    assert augment.pipeline_augmentation(None, 0, "pipeline") is None
    assert augment.model_to_train(model, None, 0, "model") is model


class _SeenImages(keras.layers.Layer):
    """Passes images through, noting each training batch (the model runs eagerly)."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.note = seen.append  # not the list: Keras would track a copy of it

    def call(self, images, training=False):
        if training:
            self.note(keras.ops.convert_to_numpy(images))
        return images


def _mirrored_per_epoch(seen):
    """From images with a left-to-right ramp in channel 0 and their number in channel 1:
    per epoch, {image number: mirrored?}."""
    epochs = []
    for item in seen:
        if isinstance(item, str):
            epochs.append({})
            continue
        for image in item:
            number = int(round(float(image[0, 0, 1])))
            assert number not in epochs[-1]  # each image once per epoch
            epochs[-1][number] = bool(image[0, 0, 0] > image[0, -1, 0])
    return epochs


def _fit_and_see(flips, count, **fit_args):
    """Fit a model that notes its training images on ``count`` numbered ramp images mirrored by
    ``flips``; per epoch, {image number: mirrored?}."""
    seen = []
    images = np.zeros((count, 32, 32, 3), np.uint8)
    images[..., 0] = (np.arange(32) * 8)[None, None, :]  # left dark, right bright
    images[..., 1] = np.arange(count)[:, None, None]
    image = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(_SeenImages(seen)(image))
    model = keras.Model(image, keras.layers.Dense(100, activation="softmax")(x))
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", run_eagerly=True)
    marker = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: seen.append("epoch"))
    batches = training.make_batches(images, np.arange(count), batch_size=16, shuffle=True, flips=flips)
    model.fit(batches, callbacks=[flips, marker], shuffle=False, verbose=0, **fit_args)
    return _mirrored_per_epoch(seen)


def test_alternating_flips_mirror_each_image_in_every_other_epoch_through_fit():
    count = 64
    flips = augment.AlternatingFlips(count, seed=3)
    first, second, third = _fit_and_see(flips, count, epochs=3)
    assert first == {i: bool(flips.first[i]) for i in range(count)}
    assert len(second) == len(third) == count
    assert 16 < sum(first.values()) < 48  # a random half starts mirrored
    assert all(second[i] != first[i] for i in range(count))  # then each one alternates
    assert third == first


def test_alternating_flips_go_on_alternating_in_a_resumed_run():
    count = 64
    flips = augment.AlternatingFlips(count, seed=3)
    (resumed,) = _fit_and_see(flips, count, initial_epoch=1, epochs=2)  # epoch 1 of 0, 1
    assert resumed == {i: not flips.first[i] for i in range(count)}


def test_array_batches_mirror_the_rows_alternating_flips_name():
    images = np.zeros((6, 32, 32, 3), np.uint8)
    images[..., 0] = np.arange(32)[None, None, :]
    flips = augment.AlternatingFlips(6, seed=0)
    flips.on_epoch_begin(1)
    batch, labels = inputs.ArrayBatches([images, np.arange(6)], 6, flips=flips)[0]
    mirrored = batch[:, 0, 0, 0] > batch[:, 0, -1, 0]
    np.testing.assert_array_equal(mirrored, ~flips.first)
    assert images[0, 0, 0, 0] == 0  # the source array is untouched


@pytest.mark.parametrize("augment_on", ["pipeline", "model"])
def test_a_recipe_with_alternating_flips_trains_without_random_mirroring(tmp_path, monkeypatch,
                                                                         augment_on):
    built, batches = [], []
    build_augmentation, make_batches = augment.build_augmentation, training.make_batches

    def noted_augmentation(*args, **kwargs):
        built.append(build_augmentation(*args, **kwargs))
        return built[-1]

    def noted_batches(*args, **kwargs):
        batches.append(kwargs.get("flips"))
        return make_batches(*args, **kwargs)

    monkeypatch.setattr(augment, "build_augmentation", noted_augmentation)
    monkeypatch.setattr(training, "make_batches", noted_batches)
    recipe = recipes.recipe("third_original", epochs=2, alternating_flips=True, augmentation="tuned")
    if keras.config.backend() != "tensorflow" and augment_on == "pipeline":
        pytest.skip("augmentation in tf.data needs TensorFlow")
    training.fit_on_images(models.build_baseline, small_dataset(200, 10), recipe, str(tmp_path),
                           augment_on=augment_on, verbose=0)
    assert built and not any(layer.horizontal_flip for layer in built)
    flips = batches[0]  # the training batches; the validation ones have none
    assert isinstance(flips, augment.AlternatingFlips) and batches[1:] == [None]
    assert flips.epoch == 1  # fit called it at each epoch's start


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_augmentation_inside_the_model_only_acts_in_training(policy):
    import keras
    images = small_dataset(200, 10).x_train[:16]  # uint8, as the pipeline delivers them
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = models.build_baseline()  # no dropout: training=True alone changes nothing
        trainee = augment.with_augmentation(model, augment.build_augmentation("original", seed=1))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert trainee.trainable_weights == model.trainable_weights  # training it trains model
    plain = np.asarray(model(images, training=True), dtype="float32")
    np.testing.assert_allclose(np.asarray(trainee(images, training=False), dtype="float32"),
                               plain, atol=1e-6)
    augmented = np.asarray(trainee(images, training=True), dtype="float32")
    assert augmented.dtype == np.float32 and np.abs(augmented - plain).max() > 1e-3


@needs_tf
def test_augmented_model_compiles_with_xla():
    import tensorflow as tf
    images = small_dataset(200, 10).x_train[:8]
    trainee = augment.model_to_train(models.build_baseline(), "tuned", 0, "model")
    step = tf.function(lambda x: trainee(x, training=True), jit_compile=True)
    assert step(images).shape == (8, 100)  # would raise if an op had no XLA kernel


@pytest.mark.slow
def test_training_with_augmentation_in_the_model_saves_the_plain_model(tmp_path):
    dataset = small_dataset(400, 20)
    model, history = training.train_image_model("third_original", models.build_third_original,
                                                dataset,
                                                recipes.recipe("third_original", epochs=2),
                                                str(tmp_path), verbose=0, augment_on="model")
    saved = artifacts.load_model(artifacts.model_path("third_original", tmp_path))
    kinds = [type(layer).__name__ for layer in saved.layers]
    assert kinds == [type(layer).__name__ for layer in models.build_third_original().layers]
    assert "RandomAffine" not in kinds and saved.name == "third_original"
    assert len(history["val_accuracy"]) == 2 and history["loss"][1] < history["loss"][0]
    # the saved weights are the trained model's (best validation epoch)
    val_accuracy = float((saved.predict(dataset.x_val, verbose=0).argmax(1) == dataset.y_val).mean())
    assert val_accuracy == pytest.approx(max(history["val_accuracy"]), abs=1e-6)


def _tiny_model(bias):
    import keras
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.set_weights([np.zeros((2, 1), "float32"), np.full((1,), bias, "float32")])
    return model


def _saved_bias(path):
    reader = _tiny_model(0.0)
    reader.load_weights(path)
    return float(reader.get_weights()[1][0])


def test_best_weights_saves_only_improvements_over_the_best_so_far(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    callback = training.BestWeights(path, best=0.5)  # 0.5: best of epochs before a resume
    model = _tiny_model(1.0)
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_accuracy": 0.4})
    assert not os.path.exists(path)
    callback.on_epoch_end(1, {"val_accuracy": 0.6})
    model.set_weights([np.zeros((2, 1), "float32"), np.full((1,), 2.0, "float32")])
    callback.on_epoch_end(2, {"val_accuracy": 0.6})  # a tie is not an improvement
    assert _saved_bias(path) == 1.0 and callback.best == 0.6
    callback.on_epoch_end(3, {"val_accuracy": 0.7})
    assert _saved_bias(path) == 2.0


def test_best_weights_cut_mid_write_keep_the_previous_best(tmp_path):
    path = str(tmp_path / "best.weights.h5")
    callback = training.BestWeights(path)
    model = _tiny_model(1.0)
    callback.set_model(model)
    callback.on_epoch_end(0, {"val_accuracy": 0.3})
    real_save = model.save_weights

    def cut_mid_write(target):
        real_save(target)
        with open(target, "r+b") as handle:  # half a file, then the process "dies"
            handle.truncate(os.path.getsize(target) // 2)
        raise KeyboardInterrupt

    model.save_weights = cut_mid_write
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(1, {"val_accuracy": 0.9})
    assert _saved_bias(path) == 1.0 and callback.best == 0.3
    assert os.listdir(tmp_path) == ["best.weights.h5"]  # no temporary left
