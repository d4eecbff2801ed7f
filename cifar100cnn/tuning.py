"""Optional keras-tuner search for the third model over a space holding both presets, on
one machine or several (keras-tuner's distributed mode: see ``tuner_role``)."""

import dataclasses
import os

import keras_tuner

from . import artifacts
from .augment import build_augmentation
from .hardware import set_seed
from .inputs import make_batches
from .models import build_third_original, build_third_tuned, whitening_kernel
from .optimization import compile_model
from .recipes import RECIPES, THIRD_ORIGINAL, THIRD_TUNED
from .training import use_jit

WIDTHS = (96, 128)  # the tuned network's first-block widths searched (x2, x4 in blocks 2, 3)


def build_candidate(hp, steps_per_epoch=1, epochs=1, whitening=None, widths=WIDTHS):
    """One model of the search space: the original recipe ("original") or the tuned network
    with its width (one of ``widths``), peak learning rate, weight decay and label smoothing
    free. XLA as ``training.use_jit("auto")`` decides."""
    preset = hp.Choice("preset", ["tuned", "original"])
    if preset == "original":
        model = build_third_original()
        recipe = THIRD_ORIGINAL
    else:
        with hp.conditional_scope("preset", ["tuned"]):
            width = hp.Choice("width", [int(w) for w in widths])
            recipe = dataclasses.replace(
                THIRD_TUNED, learning_rate=hp.Float("learning_rate", 0.4, 1.6, sampling="log"),
                weight_decay=hp.Choice("weight_decay", [5e-3, 1e-2]),
                label_smoothing=hp.Choice("label_smoothing", [0.1, 0.2]))
        model = build_third_tuned((width, 2 * width, 4 * width), whitening)
    # The learning-rate schedule spans the largest epoch budget of the search.
    return compile_model(model, dataclasses.replace(recipe, epochs=epochs), steps_per_epoch,
                         jit_compile=use_jit("auto"))


class ThirdModelHypermodel(keras_tuner.HyperModel):
    """Search space + fit: each trial also chooses its augmentation ("original" or "tuned")."""

    def __init__(self, steps_per_epoch, max_epochs, seed=0, whitening=None, widths=WIDTHS):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.max_epochs = max_epochs
        self.seed = seed
        self.whitening = whitening
        self.widths = widths

    def build(self, hp):
        return build_candidate(hp, self.steps_per_epoch, self.max_epochs, self.whitening,
                               self.widths)

    def fit(self, hp, model, data, **kwargs):
        augment = build_augmentation(hp.get("preset"), seed=self.seed)
        batch_size = RECIPES[f"third_{hp.get('preset')}"].batch_size
        train_ds = make_batches(data.x_train, data.y_train, batch_size, shuffle=True,
                                augment=augment, seed=self.seed)
        val_ds = make_batches(data.x_val, data.y_val, batch_size)
        return model.fit(train_ds, validation_data=val_ds, **kwargs)


class BudgetHyperbandOracle(keras_tuner.oracles.HyperbandOracle):
    """Hyperband's oracle that ends the search after ``max_trials`` trials: ``Oracle`` takes
    that bound, ``HyperbandOracle``'s constructor does not pass it on.

    Args:
        max_trials: the most trials (models trained) in all.
        **kwargs: ``keras_tuner.oracles.HyperbandOracle``'s arguments.
    """

    def __init__(self, max_trials, **kwargs):
        super().__init__(**kwargs)
        self.max_trials = max_trials


class BudgetHyperband(keras_tuner.Hyperband):
    """``keras_tuner.Hyperband`` (epochs per trial, weights carried between rounds) over an
    oracle given to it, e.g. a ``BudgetHyperbandOracle``.

    Args:
        oracle: a ``keras_tuner.oracles.HyperbandOracle``.
        hypermodel: the ``keras_tuner.HyperModel`` searched.
        **kwargs: ``keras_tuner.Tuner``'s arguments (``directory``, ``project_name``, ...).
    """

    def __init__(self, oracle, hypermodel, **kwargs):
        # Tuner's constructor: Hyperband's would build an oracle of its own.
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)


TUNER_VARIABLES = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")


def tuner_role(environ=None):
    """This process's part in keras-tuner's distributed mode: "chief" (runs the oracle, trains
    nothing), "worker" (trains the trials the chief hands out) or None (a search of its own).

    The mode is on when ``KERASTUNER_ORACLE_IP`` is set; the chief's ``KERASTUNER_TUNER_ID``
    is "chief", each worker's a name of its own ("tuner0", "tuner1", ...).
    """
    environ = os.environ if environ is None else environ
    if "KERASTUNER_ORACLE_IP" not in environ:
        return None
    missing = [name for name in TUNER_VARIABLES if not environ.get(name)]
    if missing:
        raise ValueError(f"distributed search: KERASTUNER_ORACLE_IP is set but {missing} not; "
                         "set all of KERASTUNER_TUNER_ID ('chief' or a worker name), "
                         "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT, or none of them.")
    return "chief" if "chief" in environ["KERASTUNER_TUNER_ID"] else "worker"


def search_third(data, max_epochs=10, budget_trials=6, directory="tuner", seed=0,
                 results_path=None, verbose=1, widths=WIDTHS):
    """Hyperband search selected by validation accuracy; returns ``(best_hp_values, results)``.

    ``budget_trials`` bounds the number of models trained (Hyperband's ``max_trials`` via
    its iterations); the summary of every trial is written to ``results_path`` as JSON.
    ``widths``: the tuned network's first-block widths to choose from (default ``WIDTHS``).

    In keras-tuner's distributed mode (``tuner_role``) every process runs this with the same
    arguments and ``directory`` (a shared folder when the machines share one): the chief
    waits for the workers' trials and returns the results; a worker returns ``(None, [])``.
    """
    if budget_trials < 1 or max_epochs < 1:
        raise ValueError(f"budget_trials and max_epochs must be >= 1, got {budget_trials}, {max_epochs}")
    role = tuner_role()
    set_seed(seed)
    batch_size = min(THIRD_TUNED.batch_size, THIRD_ORIGINAL.batch_size)
    steps = -(-len(data.x_train) // batch_size)
    oracle = BudgetHyperbandOracle(
        budget_trials, objective="val_accuracy", max_epochs=max_epochs, factor=3,
        hyperband_iterations=1, seed=seed, max_consecutive_failed_trials=2,
        max_retries_per_trial=0)
    tuner = BudgetHyperband(
        oracle, ThirdModelHypermodel(steps, max_epochs, seed, whitening_kernel(data.x_train), widths),
        directory=directory, project_name="third_model", overwrite=False)
    tuner.search(data, epochs=max_epochs, verbose=verbose)
    if role == "worker":  # the results live with the chief
        return None, []
    trials = tuner.oracle.get_best_trials(num_trials=budget_trials)
    results = [{"trial": t.trial_id, "val_accuracy": t.score, **t.hyperparameters.values}
               for t in trials]
    if results_path:
        artifacts.save_json(results, results_path)
    best = tuner.get_best_hyperparameters(1)[0].values
    return best, results
