"""Parameters reach the code from the edges: the notebooks' parameter cells, what the CLI passes
them, and the environment variables that only the edges (CLIs, notebooks) read."""

import ast
import json
import os
import re

import numpy as np
import pytest

import fake_cifar
from cifar100cnn import __main__ as cli
from cifar100cnn import distributed, environment

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIABLES = ("CIFAR100_ARCHIVE", "CIFAR100_VERIFY", "VGG16_WEIGHTS")


def code_cells(name):
    """``(parameters_cell, other_code_cells)`` of a top-level notebook, as source text."""
    with open(os.path.join(REPO, name)) as handle:
        cells = [cell for cell in json.load(handle)["cells"] if cell["cell_type"] == "code"]
    parameters = [cell for cell in cells if "parameters" in cell["metadata"].get("tags", [])]
    assert len(parameters) == 1, name
    return ("".join(parameters[0]["source"]),
            ["".join(cell["source"]) for cell in cells if cell is not parameters[0]])


def declared(name):
    tree = ast.parse(code_cells(name)[0])
    return {target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def used(name):
    return {node.id for source in code_cells(name)[1] for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}


# ---------------------------------------------------------------------------
# Each notebook declares what it uses; the CLI passes each only what it declares
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", cli.NOTEBOOKS)
def test_each_declared_parameter_is_used_by_its_notebook(name):
    assert declared(name) - used(name) == set()


@pytest.mark.parametrize("name", cli.NOTEBOOKS)
def test_the_cli_passes_each_notebook_only_what_it_declares(name):
    parameters = cli.notebook_parameters(cli.parse_args(["run", "--quick"]))
    passed = cli.notebook_arguments(os.path.join(REPO, name), parameters)
    assert set(passed) <= declared(name)
    # Every parameter the notebook shares with the CLI is passed, as the kernel sees it; the
    # archive travels as $CIFAR100_ARCHIVE (no path of the machine in the executed copy).
    assert set(passed) == declared(name) & set(parameters) - {"archive"}
    assert passed["output_dir"] == "." and passed["quick"] is True


def test_every_cli_parameter_is_declared_by_some_notebook():
    parameters = cli.notebook_parameters(cli.parse_args(["run"]))
    everywhere = set().union(*(declared(name) for name in cli.NOTEBOOKS))
    assert set(parameters) - everywhere == set()


def test_notebooks_keep_module_names_for_modules():
    for name in cli.NOTEBOOKS:
        for source in code_cells(name)[1]:
            assigned = {node.id for node in ast.walk(ast.parse(source))
                        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
            assert "models" not in assigned, name


# ---------------------------------------------------------------------------
# Environment variables: read at the edges, never in the library
# ---------------------------------------------------------------------------

def test_archive_settings_complete_the_parameters_from_the_environment():
    variables = {"CIFAR100_ARCHIVE": "/data/c.tar.gz", "CIFAR100_VERIFY": "0"}
    assert environment.archive_settings(None, True, {}) == (None, True)
    assert environment.archive_settings(None, True, variables) == ("/data/c.tar.gz", False)
    assert environment.archive_settings("/mine.tar.gz", True, variables) == ("/mine.tar.gz", False)
    assert environment.archive_settings(None, False, {"CIFAR100_VERIFY": "1"}) == (None, False)


def test_vgg16_weights_complete_the_parameter_from_the_environment():
    variables = {"VGG16_WEIGHTS": "/w/vgg16.h5"}
    assert environment.vgg16_weights("imagenet", False, {}) == "imagenet"
    assert environment.vgg16_weights("imagenet", False, variables) == "/w/vgg16.h5"
    assert environment.vgg16_weights("imagenet", True, variables) is None  # quick: random
    assert environment.vgg16_weights("/mine.h5", True, variables) == "/mine.h5"
    assert environment.vgg16_weights(None, False, variables) is None
    from_variable = environment.WEIGHTS_FROM_VARIABLE  # the CLI's file, quick mode or not
    assert environment.vgg16_weights(from_variable, True, variables) == "/w/vgg16.h5"
    with pytest.raises(ValueError, match="VGG16_WEIGHTS is not set"):
        environment.vgg16_weights(from_variable, False, {})


def test_the_cli_reads_the_variables_into_the_notebook_parameters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    variables = {"CIFAR100_ARCHIVE": "c.tar.gz", "CIFAR100_VERIFY": "0",
                 "VGG16_WEIGHTS": "/w/vgg16.h5"}
    parameters = cli.notebook_parameters(cli.parse_args(["run"]), variables)
    assert parameters["archive"] == str(tmp_path / "c.tar.gz")  # the kernels run elsewhere
    assert parameters["verify_archive"] is False and parameters["vgg16_weights"] == "/w/vgg16.h5"
    parameters = cli.notebook_parameters(cli.parse_args(["run", "--quick"]), variables)
    assert parameters["vgg16_weights"] is None
    parameters = cli.notebook_parameters(cli.parse_args(["run", "--no-verify"]), {})
    assert parameters["archive"] is None and parameters["verify_archive"] is False
    assert cli.notebook_parameters(cli.parse_args(["run"]), {})["verify_archive"] is True


@pytest.mark.parametrize("name", cli.NOTEBOOKS)
def test_each_notebook_reads_the_variables_for_the_parameters_it_declares(name, monkeypatch):
    """The notebook's own lines that call ``environment``, run on its parameter cell."""
    parameters, others = code_cells(name)
    lines = [line for source in others for line in source.splitlines()
             if re.match(r"\w[\w, ]* = environment\.", line)]
    namespace = {"environment": environment}
    exec(parameters, namespace)
    monkeypatch.setenv("CIFAR100_ARCHIVE", "/data/c.tar.gz")
    monkeypatch.setenv("CIFAR100_VERIFY", "0")
    monkeypatch.setenv("VGG16_WEIGHTS", "/w/vgg16.h5")
    for line in lines:
        exec(line, namespace)
    assert namespace["archive"] == "/data/c.tar.gz" and namespace["verify_archive"] is False
    if "vgg16_weights" in declared(name):
        assert namespace["vgg16_weights"] == "/w/vgg16.h5"


def test_the_distributed_cli_reads_the_archive_variables(tmp_path, monkeypatch):
    path = tmp_path / "local.tar.gz"
    written = fake_cifar.write_fake_archive(path, n_train=50, n_test=10)
    monkeypatch.setenv("CIFAR100_ARCHIVE", str(path))
    monkeypatch.setenv("CIFAR100_VERIFY", "0")  # the fake archive is not the official one
    args = distributed.parse_args(["train", "--model", "baseline"])
    with pytest.warns(UserWarning, match="sha256 check .* skipped"):
        dataset = distributed.load_data(args)
    np.testing.assert_array_equal(dataset.x_test, written["x_test"])


def test_no_library_module_reads_the_variables():
    package = os.path.join(REPO, "cifar100cnn")
    reading = re.compile(r"(environ\b|getenv)[^\n]*(" + "|".join(VARIABLES) + ")")
    for name in sorted(os.listdir(package)):
        if name.endswith(".py") and name != "environment.py":
            with open(os.path.join(package, name)) as handle:
                assert not reading.search(handle.read()), name


@pytest.mark.parametrize("precision", ["auto", "float32", "mixed_float16", "mixed_bfloat16"])
def test_every_training_precision_of_the_cli_reaches_only_the_training_notebooks(precision):
    # TestModels has a precision of its own (its bfloat16 checks), named apart: a training
    # policy such as "mixed_bfloat16" must never reach it.
    parameters = cli.notebook_parameters(cli.parse_args(["run", "--precision", precision]))
    takers = [name for name in cli.NOTEBOOKS
              if "precision" in cli.notebook_arguments(os.path.join(REPO, name), parameters)]
    assert takers == ["TrainingModels.ipynb", "ThirdModel.ipynb"]


def test_the_default_third_preset_is_the_committed_models_in_the_cli_and_in_the_notebook():
    from cifar100cnn import artifacts, models, recipes, training

    default = cli.parse_args(["run"]).third_preset
    notebook = {}
    exec(code_cells("ThirdModel.ipynb")[0], notebook)
    assert notebook["third_preset"] == default == "robust"
    committed = artifacts.load_model(os.path.join(REPO, "models", "cifar100_third_cnn.keras"))
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    asked_for = training.same_layout_as(
        lambda: models.build(f"third_{default}", recipes.recipe(f"third_{default}"), whitening_images=images),
        "third")
    asked_for(committed, "models/cifar100_third_cnn.keras")  # raises for another preset's network
    other = training.same_layout_as(
        lambda: models.build("third_tuned", recipes.THIRD_TUNED, whitening_images=images), "third")
    with pytest.raises(training.NotTheModelAskedFor):
        other(committed, "models/cifar100_third_cnn.keras")
