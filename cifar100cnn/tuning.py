"""Optional keras-tuner search for the third model over a space holding both presets, on
one machine or several (keras-tuner's distributed mode: see ``tuner_role``)."""

import dataclasses
import os

import keras_tuner

from . import artifacts
from .augment import model_to_train, pipeline_augmentation
from .hardware import precision_policy, set_seed
from .inputs import make_batches
from .models import build, whitening_kernel
from .optimization import compile_model
from .recipes import THIRD_ORIGINAL, THIRD_TUNED
from .training import use_jit

WIDTHS = (96, 128)  # the tuned network's first-block widths searched (x2, x4 in blocks 2, 3)


def candidate_recipe(hp, widths=WIDTHS, epochs=None):
    """The recipe of one candidate: the original recipe ("original") or the tuned one with its
    width (one of ``widths``, x2 and x4 in blocks 2 and 3), peak learning rate, weight decay
    and label smoothing free.

    Args:
        hp: ``keras_tuner.HyperParameters`` (the choices are registered on it).
        widths: the first-block widths to choose from (default ``WIDTHS``).
        epochs: the recipe's epochs (default its own).

    Returns:
        A ``recipes.Recipe``.
    """
    preset = hp.Choice("preset", ["tuned", "original"])
    recipe = THIRD_ORIGINAL
    if preset == "tuned":
        with hp.conditional_scope("preset", ["tuned"]):
            width = hp.Choice("width", [int(w) for w in widths])
            recipe = dataclasses.replace(
                THIRD_TUNED, widths=(width, 2 * width, 4 * width),
                learning_rate=hp.Float("learning_rate", 0.4, 1.6, sampling="log"),
                weight_decay=hp.Choice("weight_decay", [5e-3, 1e-2]),
                label_smoothing=hp.Choice("label_smoothing", [0.1, 0.2]))
    return recipe if epochs is None else dataclasses.replace(recipe, epochs=epochs)


def best_recipe(values, epochs=None):
    """The recipe of a candidate from its hyperparameter values (``search_third``'s best).

    Args:
        values: a dict such as ``search_third``'s first result.
        epochs: the recipe's epochs (default its own).

    Returns:
        A ``recipes.Recipe``.
    """
    hp = keras_tuner.HyperParameters()
    hp.values.update(values)
    return candidate_recipe(hp, (values.get("width", WIDTHS[0]),), epochs)


def build_candidate(hp, train_size=1, epochs=1, whitening=None, widths=WIDTHS, seed=0):
    """One model of the search space (``candidate_recipe``), compiled for ``train_size``
    training images: its learning-rate schedule spans ``epochs`` epochs at the candidate's
    own batch size. Its augmentation is inside it where training would put it there
    (``augment.model_to_train``: on a GPU, and on every backend but TensorFlow, which has no
    tf.data); XLA as ``training.use_jit("auto")`` decides."""
    recipe = candidate_recipe(hp, widths, epochs)
    name = f"third_{hp.get('preset')}"
    model = model_to_train(build(name, recipe, whitening=whitening), hp.get("preset"), seed,
                           "auto", recipe.corruption)
    steps_per_epoch = -(-train_size // recipe.batch_size)
    return compile_model(model, recipe, steps_per_epoch, jit_compile=use_jit("auto"))


class ThirdModelHypermodel(keras_tuner.HyperModel):
    """Search space + fit: each trial also chooses its augmentation ("original" or "tuned").

    Args:
        train_size: training images per epoch (sizes each candidate's schedule).
        max_epochs: the largest epoch budget of the search (the schedules span it).
        seed: the augmentation's and pipeline's seed.
        whitening: the tuned network's whitening kernel, computed from the training images.
        widths: the first-block widths searched.
    """

    def __init__(self, train_size, max_epochs, seed=0, whitening=None, widths=WIDTHS):
        super().__init__()
        self.train_size = train_size
        self.max_epochs = max_epochs
        self.seed = seed
        self.whitening = whitening
        self.widths = widths

    def build(self, hp):
        return build_candidate(hp, self.train_size, self.max_epochs, self.whitening,
                               self.widths, self.seed)

    def fit(self, hp, model, data, **kwargs):
        augment = pipeline_augmentation(hp.get("preset"), self.seed, "auto")  # None: in the model
        batch_size = candidate_recipe(hp, self.widths).batch_size
        train_ds = make_batches(data.x_train, data.y_train, batch_size, shuffle=True,
                                augment=augment, seed=self.seed)
        val_ds = make_batches(data.x_val, data.y_val, batch_size)
        return model.fit(train_ds, validation_data=val_ds, **kwargs)


def hypermodel_for(data, max_epochs, seed=0, widths=WIDTHS):
    """The search's ``ThirdModelHypermodel`` on ``data``: whitening from the training images."""
    return ThirdModelHypermodel(len(data.x_train), max_epochs, seed, whitening_kernel(data.x_train),
                                widths)


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
                 results_path=None, verbose=1, widths=WIDTHS, precision="float32"):
    """Hyperband search selected by validation accuracy; returns ``(best_hp_values, results)``.

    ``budget_trials`` bounds the number of models trained (Hyperband's ``max_trials`` via
    its iterations); the summary of every trial is written to ``results_path`` as JSON.
    ``widths``: the tuned network's first-block widths to choose from (default ``WIDTHS``).
    ``precision``: the Keras dtype policy the trials are built in (default "float32";
    ``training.set_up_training`` picks one for the machine).

    In keras-tuner's distributed mode (``tuner_role``) every process runs this with the same
    arguments and ``directory`` (a shared folder when the machines share one): the chief
    waits for the workers' trials and returns the results; a worker returns ``(None, [])``.
    """
    if budget_trials < 1 or max_epochs < 1:
        raise ValueError(f"budget_trials and max_epochs must be >= 1, got {budget_trials}, {max_epochs}")
    role = tuner_role()
    set_seed(seed)
    oracle = BudgetHyperbandOracle(
        budget_trials, objective="val_accuracy", max_epochs=max_epochs, factor=3,
        hyperband_iterations=1, seed=seed, max_consecutive_failed_trials=2,
        max_retries_per_trial=0)
    tuner = BudgetHyperband(
        oracle, hypermodel_for(data, max_epochs, seed, widths),
        directory=directory, project_name="third_model", overwrite=False)
    with precision_policy(precision):  # the trials' models are built inside the search
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
