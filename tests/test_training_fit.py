"""What training.fit and fit_on_images do with a recipe and the data, the validation accuracy
of each epoch set by the test: best-weights tracking across an interrupted and resumed run
(the resumed run keeps the best so far instead of starting afresh), early stopping after the
recipe's patience, and which split trains and which validates."""

import os

import keras
import numpy as np
import pytest

from cifar100cnn import inputs, recipes, training

# Validation accuracies the epochs report (fit's own evaluation replaced): the best is epoch 1,
# before the interruption; the resumed epochs 2 and 3 are worse.
VAL_ACCURACY = [0.5, 0.9, 0.3, 0.7]


class _Stopped(Exception):
    pass


class _Run(keras.callbacks.Callback):
    """Records each finished epoch's weights; stops the run when epoch ``stop`` begins."""

    def __init__(self, stop=None):
        super().__init__()
        self.stop, self.weights = stop, {}

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.stop:
            raise _Stopped

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = [np.array(w) for w in self.model.get_weights()]


def _fit(small_model, dataset, work_dir, run, epochs_seen, accuracies=VAL_ACCURACY,
         recipe=recipes.recipe("baseline", epochs=4)):
    model = small_model()

    def evaluate(*args, **kwargs):
        epoch = len(epochs_seen)
        epochs_seen.append(epoch)
        return {"loss": 1.0, "accuracy": accuracies[epoch]}

    model.evaluate = evaluate
    train = inputs.make_batches(dataset.x_train, dataset.y_train, 60, shuffle=True)
    val = inputs.make_batches(dataset.x_val, dataset.y_val, 60)
    history = training.fit(model, train, val, recipe, work_dir, verbose=0, jit_compile=False,
                           callbacks=[run])
    return model, history


def test_resumed_run_keeps_the_best_weights_of_the_interrupted_one(tmp_path, small_model,
                                                                  tiny_dataset):
    dataset = tiny_dataset(n_train=300, n_test=10)
    work_dir = str(tmp_path / "work")
    best_file = os.path.join(work_dir, "best.weights.h5")
    epochs_seen, first = [], _Run(stop=2)
    with pytest.raises(_Stopped):
        _fit(small_model, dataset, work_dir, first, epochs_seen)
    assert sorted(first.weights) == [0, 1]
    with open(best_file, "rb") as handle:
        saved_before = handle.read()

    second = _Run()
    model, history = _fit(small_model, dataset, work_dir, second, epochs_seen)
    assert sorted(second.weights) == [2, 3]  # resumed, not restarted
    assert history["val_accuracy"] == pytest.approx(VAL_ACCURACY)
    with open(best_file, "rb") as handle:
        assert handle.read() == saved_before  # epochs 2 and 3 were not better than epoch 1
    for ours, best in zip(model.get_weights(), first.weights[1]):
        np.testing.assert_array_equal(ours, best)  # the model ends with epoch 1's weights
    assert not any(np.array_equal(ours, last) for ours, last in zip(model.get_weights(),
                                                                   second.weights[3]))


@pytest.mark.parametrize("patience, epochs_run", [(2, 4), (3, 5), (None, 6)])
def test_early_stopping_waits_the_recipes_patience(tmp_path, small_model, tiny_dataset, patience,
                                                   epochs_run):
    run = _Run()
    _, history = _fit(small_model, tiny_dataset(n_train=300, n_test=10), str(tmp_path), run, [],
                      accuracies=[0.2, 0.5, 0.4, 0.3, 0.3, 0.1],
                      recipe=recipes.recipe("baseline", epochs=6, early_stopping=patience))
    assert sorted(run.weights) == list(range(epochs_run))
    assert len(history["val_accuracy"]) == epochs_run


def test_fit_on_images_trains_on_the_training_split_and_validates_on_the_validation_split(
        monkeypatch, tiny_dataset, small_model):
    dataset = tiny_dataset(n_train=300, n_test=10)
    given = {}

    def fit(model, train_ds, val_ds, recipe, *args, **kwargs):
        given.update(train=list(train_ds), val=list(val_ds))
        return {}

    monkeypatch.setattr(training, "fit", fit)
    training.fit_on_images(small_model, dataset, recipes.recipe("baseline", epochs=1, batch_size=64),
                           "unused", augment_on="pipeline", verbose=0)
    assert [len(x) for x, _ in given["train"]] == [64, 64, 64, 48]
    val_x = np.concatenate([np.asarray(x) for x, _ in given["val"]])
    val_y = np.concatenate([np.asarray(y) for _, y in given["val"]])
    np.testing.assert_array_equal(val_x, dataset.x_val)
    np.testing.assert_array_equal(val_y, dataset.y_val)
    train_x = np.concatenate([np.asarray(x) for x, _ in given["train"]])
    assert sorted(map(bytes, train_x)) == sorted(map(bytes, dataset.x_train))  # shuffled
