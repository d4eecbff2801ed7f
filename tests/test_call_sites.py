"""What the notebooks, distributed training, the search and the benchmarks build: the recipe
they train is the one the model is built from, and the tuned model's whitening layer is
computed from the training images (never validation or test images, never left random)."""

import ast
import glob
import json
import os

import keras
import numpy as np
import pytest

from cifar100cnn import distributed, models, recipes, tuning

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Timing runs only: the whitening's values do not change how long a step takes.
SPEED_ONLY = {"bench_measure.py"}
BUILDERS = {"build_third", "build_third_tuned", "build"}


def _code_cells(notebook):
    with open(os.path.join(ROOT, notebook)) as handle:
        cells = json.load(handle)["cells"]
    return ["".join(cell["source"]) for cell in cells if cell["cell_type"] == "code"]


def _source(path):
    if path.endswith(".ipynb"):
        return "\n".join(line for cell in _code_cells(path) for line in cell.splitlines()
                         if not line.lstrip().startswith(("%", "!")))
    with open(os.path.join(ROOT, path)) as handle:
        return handle.read()


def _name(func):
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)


def whitening_arguments(path):
    """``(builds, sources)`` of one file: how many calls build a model, and the source text
    of every whitening argument given (to ``whitening_kernel``, ``whitening_images=``,
    ``build_third``'s second or ``build_third_tuned``'s second argument, ``whitening=``)."""
    source = _source(path)
    builds, sources = 0, []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        given = [kw.value for kw in node.keywords if kw.arg in ("whitening_images", "whitening")]
        if name == "whitening_kernel" and node.args:
            given.append(node.args[0])
        if name in ("build_third", "build_third_tuned") and len(node.args) >= 2:
            given.append(node.args[1])
        builds += name in BUILDERS
        sources += [ast.get_source_segment(source, value) for value in given]
    return builds, sources


def _files():
    files = ["ThirdModel.ipynb", "TrainingModels.ipynb"]
    files += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "cifar100cnn", "*.py")))
    files += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
    return files


@pytest.mark.parametrize("path", _files())
def test_whitening_comes_from_the_training_images_wherever_a_model_is_built(path):
    builds, sources = whitening_arguments(path)
    for text in sources:
        assert "x_val" not in text and "x_test" not in text and text != "None", (path, text)
        if "(" in text or "." in text or "[" in text:  # an expression, not a variable passed on
            assert "x_train" in text, (path, text)
    tuned = "third_tuned" in _source(path) or "build_third(" in _source(path)
    if builds and tuned and os.path.basename(path) not in SPEED_ONLY and path != "cifar100cnn/models.py":
        assert sources, f"{path} builds the tuned model without computing its whitening"


def test_the_static_check_sees_a_wrong_whitening_source():
    assert whitening_arguments("ThirdModel.ipynb")[1] == ["dataset.x_train"]
    assert whitening_arguments("cifar100cnn/tuning.py")[1] == ["whitening", "data.x_train"]
    assert whitening_arguments("cifar100cnn/distributed.py")[1] == ["data.x_train"]


def _kernel(model):
    return keras.ops.convert_to_numpy(model.get_layer("whiten").kernel)


def test_distributed_training_builds_the_committed_recipe_whitened_on_the_training_images(tiny_dataset):
    dataset = tiny_dataset(n_train=300, n_test=20)
    build, recipe_name = distributed.builder("third", dataset)
    model = build()
    assert recipe_name == f"third_{recipes.SHIPPED_THIRD_PRESET}" == "third_robust"
    recipe = recipes.RECIPES[recipe_name]
    np.testing.assert_array_equal(_kernel(model), models.whitening_kernel(
        dataset.x_train, eps=recipe.whiten_eps, input_norm=recipe.input_norm))
    convs = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert tuple(convs[1::2]) == recipes.RECIPES[recipe_name].widths


class _Trained(Exception):
    pass


def _run_third_model_cells(best, dataset, monkeypatch, preset="tuned"):
    """Runs ThirdModel.ipynb's cells that choose the recipe, build and train the third model,
    the training replaced by a stub that records what it was given."""
    from cifar100cnn import training

    cells = _code_cells("ThirdModel.ipynb")
    choose = next(cell for cell in cells if "def build_third():" in cell)
    train = next(cell for cell in cells if '"third", build_third, dataset' in cell)
    given = {}

    def train_image_model(name, build, data, recipe, *args, **kwargs):
        given.update(name=name, model=build(), data=data, recipe=recipe)
        raise _Trained

    monkeypatch.setattr(training, "train_image_model", train_image_model)
    namespace = {"best": best, "third_preset": preset, "third_epochs": None, "epochs": 1,
                 "dataset": dataset, "models": models, "recipes": recipes, "tuning": tuning,
                 "training": training, "models_dir": "unused", "retrain": False, "seed": 0,
                 "strategy": None, "keras_verbose": 0, "augment_on": "auto", "jit_compile": False,
                 "precision": "float32"}
    monkeypatch.setattr(keras.Model, "summary", lambda self, *a, **k: None)
    exec(choose, namespace)
    with pytest.raises(_Trained):
        exec(train, namespace)
    return given


@pytest.mark.parametrize("best, widths", [
    (None, recipes.THIRD_TUNED.widths),
    ({"preset": "tuned", "width": 8, "learning_rate": 0.5, "weight_decay": 5e-3,
      "label_smoothing": 0.1}, (8, 16, 32)),
])
def test_third_model_notebook_trains_the_model_its_recipe_describes(best, widths, tiny_dataset,
                                                                     monkeypatch):
    dataset = tiny_dataset(n_train=300, n_test=20)
    given = _run_third_model_cells(best, dataset, monkeypatch)
    recipe, model = given["recipe"], given["model"]
    assert recipe.widths == widths and recipe.epochs == 1
    if best:
        assert (recipe.learning_rate, recipe.weight_decay, recipe.label_smoothing) == (0.5, 5e-3, 0.1)
    convs = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert tuple(convs[1::2]) == widths
    np.testing.assert_array_equal(_kernel(model), models.whitening_kernel(dataset.x_train))


def test_the_robust_preset_trains_the_tuned_network_per_image_with_noise_a_gentler_whitening_and_alternating_flips(
        tiny_dataset, monkeypatch):
    dataset = tiny_dataset(n_train=300, n_test=20)
    given = _run_third_model_cells(None, dataset, monkeypatch, preset="robust")
    recipe, model = given["recipe"], given["model"]
    assert recipe == recipes.recipe("third_tuned", epochs=1, input_norm="image", corruption="noise05",
                                    whiten_eps=0.01, alternating_flips=True)
    convs = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert tuple(convs[1::2]) == recipes.THIRD_TUNED.widths
    assert "standardize_image" in [layer.name for layer in model.layers]
    np.testing.assert_array_equal(_kernel(model), models.whitening_kernel(dataset.x_train, eps=0.01,
                                                                          input_norm="image"))
    assert not np.allclose(_kernel(model), models.whitening_kernel(dataset.x_train))
