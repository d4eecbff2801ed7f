"""Optional keras-tuner search for the third model over a space holding both presets."""

import keras_tuner

from . import artifacts
from .data import make_pipeline
from .models import (RECIPES, build_augmentation, build_third_original, build_third_tuned,
                     whitening_kernel)
from .training import compile_model, set_seed


def build_candidate(hp, steps_per_epoch=1, epochs=1, whitening=None):
    """One model of the search space: the original recipe ("original") or the tuned network
    with its width, peak learning rate, weight decay and label smoothing free."""
    preset = hp.Choice("preset", ["tuned", "original"])
    if preset == "original":
        model = build_third_original()
        recipe = dict(RECIPES["third_original"])
    else:
        with hp.conditional_scope("preset", ["tuned"]):
            width = hp.Choice("width", [96, 128])
            recipe = {**RECIPES["third_tuned"],
                      "learning_rate": hp.Float("learning_rate", 0.4, 1.6, sampling="log"),
                      "weight_decay": hp.Choice("weight_decay", [5e-3, 1e-2]),
                      "label_smoothing": hp.Choice("label_smoothing", [0.1, 0.2])}
        model = build_third_tuned((width, 2 * width, 4 * width), whitening)
    # The learning-rate schedule spans the largest epoch budget of the search.
    return compile_model(model, recipe, steps_per_epoch, epochs)


class ThirdModelHypermodel(keras_tuner.HyperModel):
    """Search space + fit: each trial also chooses its augmentation ("original" or "tuned")."""

    def __init__(self, steps_per_epoch, max_epochs, seed=0, whitening=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.max_epochs = max_epochs
        self.seed = seed
        self.whitening = whitening

    def build(self, hp):
        return build_candidate(hp, self.steps_per_epoch, self.max_epochs, self.whitening)

    def fit(self, hp, model, data, **kwargs):
        augment = build_augmentation(hp.get("preset"), seed=self.seed)
        batch_size = RECIPES[f"third_{hp.get('preset')}"]["batch_size"]
        train_ds = make_pipeline(data.x_train, data.y_train, batch_size, shuffle=True,
                                 augment=augment, seed=self.seed)
        val_ds = make_pipeline(data.x_val, data.y_val, batch_size)
        return model.fit(train_ds, validation_data=val_ds, **kwargs)


def search_third(data, max_epochs=10, budget_trials=6, directory="tuner", seed=0,
                 results_path=None, verbose=1):
    """Hyperband search selected by validation accuracy; returns ``(best_hp_values, results)``.

    ``budget_trials`` bounds the number of models trained (Hyperband's ``max_trials`` via
    its iterations); the summary of every trial is written to ``results_path`` as JSON.
    """
    if budget_trials < 1 or max_epochs < 1:
        raise ValueError(f"budget_trials and max_epochs must be >= 1, got {budget_trials}, {max_epochs}")
    set_seed(seed)
    batch_size = min(RECIPES["third_tuned"]["batch_size"], RECIPES["third_original"]["batch_size"])
    steps = -(-len(data.x_train) // batch_size)
    tuner = keras_tuner.Hyperband(
        ThirdModelHypermodel(steps, max_epochs, seed, whitening_kernel(data.x_train)),
        objective="val_accuracy",
        max_epochs=max_epochs, factor=3, hyperband_iterations=1, seed=seed,
        max_consecutive_failed_trials=2, directory=directory, project_name="third_model",
        overwrite=False, max_retries_per_trial=0)
    tuner.oracle.max_trials = budget_trials
    tuner.search(data, epochs=max_epochs, verbose=verbose)
    trials = tuner.oracle.get_best_trials(num_trials=budget_trials)
    results = [{"trial": t.trial_id, "val_accuracy": t.score, **t.hyperparameters.values}
               for t in trials]
    if results_path:
        artifacts.save_json(results, results_path)
    best = tuner.get_best_hyperparameters(1)[0].values
    return best, results
