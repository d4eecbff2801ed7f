"""Optimizers, learning-rate schedules and the training loss (no TensorFlow imports:
the same code serves any Keras backend)."""

import keras


def learning_rate_schedule(peak, total_steps, warmup=0.15):
    """Linear warm-up from ``peak / 10`` over ``warmup`` of the steps, then cosine decay to 0.

    Args:
        peak: the highest learning rate.
        total_steps: optimizer steps in the whole run.
        warmup: fraction of the steps spent warming up (default 0.15).

    Returns:
        A Keras ``CosineDecay`` schedule.
    """
    warmup_steps = max(1, int(warmup * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        peak / 10, decay_steps=max(1, total_steps - warmup_steps), warmup_target=peak,
        warmup_steps=warmup_steps)


def make_optimizer(recipe, steps_per_epoch):
    """The optimizer a recipe names.

    Args:
        recipe: a ``recipes.Recipe``: "rmsprop" (constant rate) or "sgd" (Nesterov momentum,
            warm-up + cosine schedule over ``recipe.epochs``, decoupled weight decay off the
            batch-norm and bias terms, optionally an exponential moving average of the weights).
        steps_per_epoch: optimizer steps in one epoch.

    Returns:
        A Keras optimizer.
    """
    if recipe.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(recipe.learning_rate)
    schedule = learning_rate_schedule(recipe.learning_rate, steps_per_epoch * recipe.epochs,
                                      recipe.warmup)
    ema = recipe.ema_momentum
    optimizer = keras.optimizers.SGD(schedule, momentum=recipe.momentum, nesterov=True,
                                     weight_decay=recipe.weight_decay,
                                     use_ema=bool(ema), ema_momentum=ema or 0.99)
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


@keras.saving.register_keras_serializable(package="cifar100cnn")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy with label smoothing on integer labels (used in training only)."""

    def __init__(self, label_smoothing=0.1, name="sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y_true = keras.ops.one_hot(keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32"),
                                   keras.ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(y_true, y_pred,
                                                     label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def compile_model(model, recipe, steps_per_epoch, jit_compile="auto"):
    """Compile ``model`` with the recipe's optimizer, loss and ``steps_per_execution``.

    Args:
        model: the Keras model.
        recipe: a ``recipes.Recipe``.
        steps_per_epoch: optimizer steps in one epoch (the learning-rate schedule spans
            ``recipe.epochs`` of them).
        jit_compile: passed to ``model.compile`` (default "auto"). The training code passes
            ``True`` or ``False`` (``training.use_jit``): Keras' "auto" decides on its own and
            may turn XLA off without saying so.

    Returns:
        ``model``, compiled.
    """
    loss = keras.losses.SparseCategoricalCrossentropy()
    if recipe.label_smoothing:
        # Label smoothing needs one-hot targets; the pipeline stays sparse.
        loss = SparseSmoothedCrossentropy(recipe.label_smoothing)
    model.compile(optimizer=make_optimizer(recipe, steps_per_epoch), loss=loss,
                  metrics=["accuracy"], steps_per_execution=recipe.steps_per_execution,
                  jit_compile=jit_compile)
    return model
