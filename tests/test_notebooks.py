"""All four notebooks, executed in order by the README's main command in quick mode."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cifar100cnn import artifacts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("TrainingModels.ipynb", "ThirdModel.ipynb", "TestModels.ipynb", "VisualizeModel.ipynb")


def run_pipeline(out, *extra):
    command = [sys.executable, "-m", "cifar100cnn", "run", "--quick", "--out", str(out), *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)


def errors_in(notebook_path):
    with open(notebook_path) as handle:
        cells = json.load(handle)["cells"]
    return [output for cell in cells for output in cell.get("outputs", [])
            if output.get("output_type") == "error"]


def outputs_text(notebook_path):
    with open(notebook_path) as handle:
        cells = json.load(handle)["cells"]
    return "".join("".join(output.get("text", "")) for cell in cells
                   for output in cell.get("outputs", []))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    result = run_pipeline(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_top_level_notebooks_have_no_outputs_and_a_parameters_cell():
    for name in NOTEBOOKS:
        with open(os.path.join(REPO, name)) as handle:
            cells = json.load(handle)["cells"]
        assert all(not cell.get("outputs") for cell in cells if cell["cell_type"] == "code"), name
        assert any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in cells), name


@pytest.mark.slow
def test_quick_run_executes_all_four_notebooks_without_errors(quick_run):
    for name in NOTEBOOKS:
        executed = quick_run / "executed" / name
        assert executed.exists(), name
        assert errors_in(executed) == [], name


@pytest.mark.slow
def test_quick_run_produces_loadable_artifacts(quick_run):
    for name in ("baseline", "overfit", "third", "third_original", "vgg16"):
        model = artifacts.load_model(artifacts.model_path(name, quick_run / "models"))
        assert model.output_shape == (None, 100)
        assert (quick_run / "models" / os.path.basename(artifacts.history_path(name))).exists()
    x_test, y_test = artifacts.load_test_arrays(quick_run / "arrays")
    assert x_test.dtype == np.uint8 and x_test.shape == (500, 32, 32, 3)
    assert (quick_run / "models" / "results.csv").exists()
    for figure in ("history_baseline.png", "history_overfit.png", "history_third.png",
                   "history_vgg16.png", "examples.png"):
        assert (quick_run / "figures" / figure).stat().st_size > 5000, figure


@pytest.mark.slow
def test_random_vgg16_weights_are_labelled_loudly(quick_run):
    assert "VGG16 WITH RANDOM WEIGHTS" in outputs_text(quick_run / "executed" / "TrainingModels.ipynb")


@pytest.mark.slow
def test_rerun_reuses_finished_models(quick_run):
    path = artifacts.model_path("baseline", quick_run / "models")
    stamp = os.stat(path).st_mtime_ns
    result = run_pipeline(quick_run, "--notebooks", "TrainingModels.ipynb")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.stat(path).st_mtime_ns == stamp
    assert "Reusing" in outputs_text(quick_run / "executed" / "TrainingModels.ipynb")


def test_quick_and_synthetic_runs_never_write_over_the_cifar100_models(tmp_path):
    from cifar100cnn.__main__ import REPO_ROOT, notebook_parameters, parse_args

    def output_dir(*argv):
        return notebook_parameters(parse_args(["run", *argv]))["output_dir"]

    assert output_dir() == REPO_ROOT
    assert output_dir("--quick") == os.path.join(REPO_ROOT, "runs", "quick")
    assert output_dir("--data", "synthetic") == os.path.join(REPO_ROOT, "runs", "synthetic")
    assert output_dir("--quick", "--out", str(tmp_path)) == str(tmp_path)


def test_vgg16_options_reach_the_training_notebook():
    import papermill

    from cifar100cnn.__main__ import REPO_ROOT, notebook_parameters, parse_args

    parameters = notebook_parameters(parse_args(["run", "--vgg16-finetune", "--vgg16-input-size", "96"]))
    assert parameters["vgg16_finetune"] is True and parameters["vgg16_input_size"] == 96
    declared = papermill.inspect_notebook(os.path.join(REPO_ROOT, "TrainingModels.ipynb"))
    assert {"vgg16_finetune", "vgg16_input_size"} <= set(declared)
