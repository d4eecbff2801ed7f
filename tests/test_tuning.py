"""The third model's search (tuning.py) without training: what each candidate is built and
compiled with, and what it is fed."""

import keras
import keras_tuner
import numpy as np
import pytest

from cifar100cnn import models, recipes, tuning


class _Stop(Exception):
    pass


@pytest.fixture
def search_hypermodel(monkeypatch, tmp_path, tiny_dataset):
    """A factory: ``search_hypermodel(max_epochs)`` runs ``search_third`` up to the tuner's
    construction and returns ``(hypermodel, dataset)``."""
    def run(max_epochs=10):
        dataset = tiny_dataset(n_train=1000, n_test=20)
        captured = {}

        def tuner(oracle, hypermodel, **kwargs):
            captured["hypermodel"] = hypermodel
            raise _Stop

        monkeypatch.setattr(tuning, "BudgetHyperband", tuner)
        with pytest.raises(_Stop):
            tuning.search_third(dataset, max_epochs=max_epochs, budget_trials=2,
                                directory=str(tmp_path / "tuner"), widths=(8,))
        return captured["hypermodel"], dataset

    return run


def _values(preset):
    hp = keras_tuner.HyperParameters()
    hp.values.update({"preset": preset, "width": 8, "learning_rate": 0.8, "weight_decay": 5e-3,
                      "label_smoothing": 0.1})
    return hp


def _network(model):
    """The candidate network itself: inside the trial model when augmentation runs there."""
    return next((layer for layer in model.layers if isinstance(layer, keras.Model)), model)


def _rate_at(optimizer, step):
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_tuned_candidates_schedule_spans_the_epochs_at_their_own_batch_size(search_hypermodel):
    hypermodel, dataset = search_hypermodel(max_epochs=10)
    steps = 10 * -(-len(dataset.x_train) // recipes.THIRD_TUNED.batch_size)  # 10 x 2 steps of 512
    optimizer = hypermodel.build(_values("tuned")).optimizer
    assert _rate_at(optimizer, 0) == pytest.approx(0.08)
    assert _rate_at(optimizer, int(0.15 * steps)) == pytest.approx(0.8)  # warm-up done
    assert _rate_at(optimizer, steps // 2) < 0.8  # decaying within the run ...
    assert _rate_at(optimizer, steps) == pytest.approx(0.0, abs=1e-6)  # ... to zero at its end


def test_candidates_are_built_and_fed_as_their_recipe_says(search_hypermodel, monkeypatch):
    hypermodel, dataset = search_hypermodel(max_epochs=4)
    hp = _values("tuned")
    model = hypermodel.build(hp)
    convs = [layer.filters for layer in _network(model).layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[1:] == [8, 8, 16, 16, 32, 32]
    assert model.optimizer.weight_decay == pytest.approx(5e-3)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    batches = []
    monkeypatch.setattr(tuning, "make_batches",
                        lambda x, y, batch_size, **kwargs: batches.append((len(x), batch_size)))

    class Model:
        def fit(self, *args, **kwargs):
            return kwargs

    for preset, batch_size in (("tuned", 512), ("original", 100)):
        batches.clear()
        hypermodel.fit(_values(preset), Model(), dataset, epochs=1)
        assert batches == [(len(dataset.x_train), batch_size), (len(dataset.x_val), batch_size)]
    assert isinstance(hypermodel.build(_values("original")).optimizer, keras.optimizers.RMSprop)


def test_search_whitens_with_the_training_images(search_hypermodel):
    hypermodel, dataset = search_hypermodel()
    expected = models.whitening_kernel(dataset.x_train)
    np.testing.assert_array_equal(hypermodel.whitening, expected)
    kernel = _network(hypermodel.build(_values("tuned"))).get_layer("whiten").kernel
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(kernel), expected)


def test_best_values_give_the_recipe_trained_after_the_search():
    values = {"preset": "tuned", "width": 96, "learning_rate": 0.5, "weight_decay": 5e-3,
              "label_smoothing": 0.1, "tuner/epochs": 4}
    recipe = tuning.best_recipe(values, epochs=3)
    assert recipe == recipes.recipe("third_tuned", epochs=3, widths=(96, 192, 384),
                                    learning_rate=0.5, weight_decay=5e-3, label_smoothing=0.1)
    assert tuning.best_recipe({"preset": "original"}) == recipes.THIRD_ORIGINAL


@pytest.mark.parametrize("in_model", [False, True])  # a CPU under TensorFlow; a GPU, or JAX/PyTorch
def test_candidates_augment_where_training_would(search_hypermodel, monkeypatch, in_model):
    from cifar100cnn import augment

    hypermodel, dataset = search_hypermodel(max_epochs=2)
    monkeypatch.setattr(augment, "augment_in_model", lambda augment_on="auto": in_model)
    model = hypermodel.build(_values("tuned"))
    inner = [layer for layer in model.layers if isinstance(layer, augment.RandomAffine)]
    assert len(inner) == int(in_model)
    fed = []
    monkeypatch.setattr(tuning, "make_batches",
                        lambda x, y, batch_size, augment=None, **kwargs: fed.append(augment))

    class Model:
        def fit(self, *args, **kwargs):
            return kwargs

    hypermodel.fit(_values("tuned"), Model(), dataset, epochs=1)
    assert (fed[0] is None) == in_model and fed[1] is None  # never both, never on validation
    if not in_model:
        assert isinstance(fed[0], augment.RandomAffine)
