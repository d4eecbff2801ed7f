"""The training maths of the recipes: learning-rate schedule, decoupled weight decay, label
smoothing, weight averaging (optimization.py), checked against formulas written here."""

import dataclasses
import math

import keras
import numpy as np
import pytest

from cifar100cnn import optimization, recipes

SGD = dataclasses.replace(recipes.THIRD_TUNED, epochs=10)


def expected_rate(step, peak, total_steps, warmup):
    """Linear warm-up from peak / 10, then cosine decay to zero (the documented schedule)."""
    warmup_steps = max(1, int(warmup * total_steps))
    if step < warmup_steps:
        return peak / 10 + (peak - peak / 10) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def rate_at(optimizer, step):
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_schedule_warms_up_from_a_tenth_of_the_peak_then_decays_to_zero():
    schedule = optimization.learning_rate_schedule(1.2, 100, warmup=0.2)
    rates = [float(schedule(step)) for step in range(101)]
    assert rates[0] == pytest.approx(0.12)
    assert rates[10] == pytest.approx(0.12 + 1.08 / 2)
    assert max(rates) == pytest.approx(1.2) and int(np.argmax(rates)) == 20
    assert rates[60] == pytest.approx(0.6, rel=1e-4)  # half-way down the cosine
    assert rates[100] == pytest.approx(0.0, abs=1e-6)
    assert all(a <= b for a, b in zip(rates[:20], rates[1:21]))  # rising while warming up
    assert all(a >= b for a, b in zip(rates[20:], rates[21:]))  # falling afterwards


@pytest.mark.parametrize("batch_size, epochs", [(512, 10), (100, 3)])
def test_sgd_rate_per_step_follows_the_recipe_for_its_batch_size_and_epochs(batch_size, epochs):
    recipe = dataclasses.replace(SGD, batch_size=batch_size, epochs=epochs)
    steps_per_epoch = -(-40_000 // batch_size)
    total = steps_per_epoch * epochs
    optimizer = optimization.make_optimizer(recipe, steps_per_epoch)
    for step in (0, 1, total // 20, int(0.15 * total), total // 2, total - 1, total):
        assert rate_at(optimizer, step) == pytest.approx(
            expected_rate(step, recipe.learning_rate, total, recipe.warmup), rel=1e-4, abs=1e-6)


def test_tuned_recipe_schedule_peaks_at_1_2_after_15_percent_of_16_epochs():
    steps_per_epoch = -(-40_000 // 512)  # 79 steps of 512 images
    optimizer = optimization.make_optimizer(recipes.THIRD_TUNED, steps_per_epoch)
    total = 16 * steps_per_epoch
    assert rate_at(optimizer, 0) == pytest.approx(0.12)
    assert rate_at(optimizer, int(0.15 * total)) == pytest.approx(1.2)
    assert rate_at(optimizer, total) == pytest.approx(0.0, abs=1e-6)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.nesterov
    assert optimizer.momentum == pytest.approx(0.9)


def test_rmsprop_recipes_keep_their_rate_constant():
    optimizer = optimization.make_optimizer(recipes.BASELINE, steps_per_epoch=400)
    assert isinstance(optimizer, keras.optimizers.RMSprop)
    assert rate_at(optimizer, 0) == pytest.approx(1e-3) == rate_at(optimizer, 10_000)


def _conv_bn_dense():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(2, 3, use_bias=True, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(x))
    for variable in model.trainable_variables:  # biases and beta start at zero: make them count
        variable.assign(np.full(variable.shape, 0.5, "float32") + keras.ops.convert_to_numpy(variable))
    return model


def _one_step_with_zero_gradients(recipe):
    model = _conv_bn_dense()
    optimizer = optimization.make_optimizer(recipe, steps_per_epoch=10)
    before = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.trainable_variables}
    optimizer.apply_gradients([(keras.ops.zeros(v.shape), v) for v in model.trainable_variables])
    after = {v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables}
    return before, after


def test_weight_decay_shrinks_kernels_only_by_rate_times_decay():
    recipe = dataclasses.replace(SGD, weight_decay=1e-2)
    before, after = _one_step_with_zero_gradients(recipe)
    rate = recipe.learning_rate / 10  # the first step's rate
    kernels = [path for path in before if path.endswith("kernel")]
    others = [path for path in before if not path.endswith("kernel")]
    assert len(kernels) == 2 and sorted(p.rsplit("/", 1)[1] for p in others) == ["beta", "bias", "bias", "gamma"]
    for path in kernels:  # decoupled: w <- w - rate * decay * w, whatever the gradient
        np.testing.assert_allclose(after[path], before[path] * (1 - rate * 1e-2), rtol=1e-6)
    for path in others:  # batch-norm and bias terms are not decayed
        np.testing.assert_array_equal(after[path], before[path])


def test_without_weight_decay_zero_gradients_change_nothing():
    before, after = _one_step_with_zero_gradients(dataclasses.replace(SGD, weight_decay=0.0))
    for path in before:
        np.testing.assert_array_equal(after[path], before[path])


@pytest.mark.parametrize("smoothing", [0.1, 0.2])
def test_recipe_label_smoothing_reaches_the_compiled_loss(smoothing, small_model):
    model = optimization.compile_model(small_model(classes=5),
                                       dataclasses.replace(SGD, label_smoothing=smoothing), 10)
    probabilities = np.random.default_rng(0).dirichlet(np.ones(5), 8).astype("float32")
    labels = np.arange(8) % 5
    targets = np.full((8, 5), smoothing / 5) + (1 - smoothing) * np.eye(5)[labels]
    expected = -(targets * np.log(probabilities)).sum(axis=1).mean()
    assert float(model.loss(labels, probabilities)) == pytest.approx(expected, rel=1e-4)


def test_no_label_smoothing_means_plain_cross_entropy(small_model):
    model = optimization.compile_model(small_model(classes=5), recipes.BASELINE, 10)
    probabilities = np.random.default_rng(1).dirichlet(np.ones(5), 8).astype("float32")
    labels = np.arange(8) % 5
    expected = -np.log(probabilities[np.arange(8), labels]).mean()
    assert float(model.loss(labels, probabilities)) == pytest.approx(expected, rel=1e-4)


def test_compile_model_uses_the_recipe_steps_per_execution_and_optimizer(small_model):
    model = optimization.compile_model(small_model(), recipes.OVERFIT, 10)
    assert model.steps_per_execution == 20
    assert isinstance(model.optimizer, keras.optimizers.RMSprop)


def _train_one_variable(ema_momentum, steps=5):
    recipe = dataclasses.replace(SGD, ema_momentum=ema_momentum, weight_decay=0.0, momentum=0.0)
    optimizer = optimization.make_optimizer(recipe, steps_per_epoch=100)
    variable = keras.Variable(np.zeros(1, "float32"), name="w")
    optimizer.build([variable])
    raw = []
    for _ in range(steps):
        optimizer.apply_gradients([(keras.ops.ones(1), variable)])
        raw.append(float(keras.ops.convert_to_numpy(variable)[0]))
    optimizer.finalize_variable_values([variable])  # what fit does at its end
    return optimizer, raw, float(keras.ops.convert_to_numpy(variable)[0])


def test_ema_when_on_replaces_the_weights_by_their_moving_average():
    optimizer, raw, final = _train_one_variable(0.5)
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.5)
    average = raw[0]  # Keras starts the average at the first step's weights
    for value in raw[1:]:
        average = 0.5 * average + 0.5 * value
    assert final == pytest.approx(average, rel=1e-5) and final != pytest.approx(raw[-1])


def test_ema_off_leaves_the_trained_weights():
    optimizer, raw, final = _train_one_variable(None)
    assert not optimizer.use_ema and final == pytest.approx(raw[-1])
