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


TERMINAL = {}  # what the quick run printed


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    result = run_pipeline(out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    TERMINAL.update(stdout=result.stdout, stderr=result.stderr)
    return out


@pytest.mark.slow
def test_quick_run_shows_progress_and_nothing_alarming(quick_run):
    printed = TERMINAL["stdout"] + TERMINAL["stderr"]
    for number, name in enumerate(NOTEBOOKS, 1):
        assert f"[{number}/4] {name}" in printed, name
    assert "step 1/" in printed and "Trained third in this run" in printed
    for alarming in ("ERROR", "KeyboardInterrupt", "without encryption", "I0000", "E0000",
                     "Traceback", "Warning"):
        assert alarming not in printed, alarming
    assert TERMINAL["stderr"] == ""
    assert not (quick_run / "failed").exists()
    for name in NOTEBOOKS:  # papermill's record: the notebook and its final place, relative
        with open(quick_run / "executed" / name) as handle:
            record = json.load(handle)["metadata"]["papermill"]
        assert record["input_path"] == name and record["output_path"] == f"executed/{name}"
        assert str(quick_run) not in json.dumps(record) and REPO not in json.dumps(record)


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
    # What the figures show is tested on the plotting functions (test_visualization.py); here:
    # each one was written by the notebook, is a PNG, and is not blank.
    import matplotlib.image

    for figure in ("history_baseline.png", "history_overfit.png", "history_third.png",
                   "history_vgg16.png", "examples.png"):
        pixels = matplotlib.image.imread(quick_run / "figures" / figure)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100, figure
        assert pixels[..., :3].std() > 0.01, figure


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


@pytest.mark.slow
def test_third_epochs_sets_the_third_models_epochs_even_in_quick_mode(tmp_path):
    result = run_pipeline(tmp_path, "--third-preset", "original", "--third-epochs", "2",
                          "--notebooks", "ThirdModel.ipynb")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(artifacts.history_path("third", tmp_path / "models")) as f:
        history = json.load(f)
    assert len(history["val_accuracy"]) == 2  # quick mode alone: 1


@pytest.mark.slow
def test_forced_gpu_paths_train_together_and_end_in_float32_models(tmp_path):
    """ThirdModel in quick mode with ``--force-gpu-paths``: the third model (the original
    recipe: rotations, flips, shifts and dropout) trains with mixed_float16 (loss scaling),
    augmentation inside the model and XLA asked for, mirrored over 2 logical CPU devices
    (one GPU: XLA on one replica). About a minute; the tuned recipe at full width would take
    many in float16 on a CPU."""
    import keras
    import tensorflow as tf

    result = run_pipeline(tmp_path, "--force-gpu-paths", "--third-preset", "original",
                          "--notebooks", "ThirdModel.ipynb")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = outputs_text(tmp_path / "executed" / "ThirdModel.ipynb")
    assert "precision mixed_float16" in text
    if not tf.config.list_physical_devices("GPU"):
        assert "strategy MirroredStrategy with 2 replica(s)" in text
    assert ("GPU paths forced: XLA (jit_compile), augmentation inside the model, "
            "mixed precision (mixed_float16)") in text
    # XLA cannot read variables across logical CPU devices: there, only XLA may be dropped.
    fallbacks = [line for line in text.splitlines() if "the fast path failed" in line]
    assert all(line.endswith("with XLA (jit_compile) turned off.") for line in fallbacks)
    keras.mixed_precision.set_global_policy("float32")
    model = artifacts.load_model(artifacts.model_path("third", tmp_path / "models"))
    assert {w.dtype for w in model.weights} == {"float32"}
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert model.count_params() == 643_492  # the original recipe's network, no augmentation


def test_quick_and_synthetic_runs_never_write_over_the_cifar100_models(tmp_path):
    from cifar100cnn.__main__ import REPO_ROOT, notebook_parameters, parse_args

    def output_dir(*argv):
        return notebook_parameters(parse_args(["run", *argv]))["output_dir"]

    assert output_dir() == os.path.join(REPO_ROOT, "runs", "cifar100")
    assert output_dir("--record") == REPO_ROOT
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


# ---------------------------------------------------------------------------
# A failed or interrupted run never changes the executed copies of the last good run
# ---------------------------------------------------------------------------

def _tiny_notebook(path, code):
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell(code)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, str(path))


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    """A repository holding Tiny.ipynb, whose output folder already holds an executed copy of
    it (the committed record of an earlier, successful run)."""
    from cifar100cnn import __main__ as cli
    from cifar100cnn import runner

    repo, out = tmp_path / "repo", tmp_path / "out"
    repo.mkdir()
    _tiny_notebook(repo / "Tiny.ipynb", "print('done')")
    shipped = out / "executed" / "Tiny.ipynb"
    shipped.parent.mkdir(parents=True)
    shipped.write_bytes(b'{"record": "of the last successful run"}\n')
    monkeypatch.setattr(runner, "REPO_ROOT", str(repo))
    monkeypatch.setattr(runner, "NOTEBOOKS", ("Tiny.ipynb",))
    # A run may set variables for its kernels (kernel_environment): undo them afterwards.
    for key in ("TQDM_DISABLE", "PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL", "PYTHONPATH"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    return cli, repo, out, shipped


def _fake_papermill(monkeypatch, outcome):
    """papermill.execute_notebook writes part of a notebook to its output path, then ends
    with ``outcome`` (an exception to raise, or None to finish)."""
    import papermill

    outputs = []

    def execute_notebook(source, output, **kwargs):
        outputs.append(output)
        with open(output, "w") as handle:  # as far as the run got, with papermill's record
            json.dump({"cells": [], "metadata": {"papermill": {"input_path": source,
                                                               "output_path": output}}}, handle)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(papermill, "inspect_notebook", lambda path: {"x": {}})
    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return outputs


def test_failed_notebook_leaves_the_executed_copy_untouched_and_says_where_it_went(
        fake_repo, monkeypatch, capsys):
    import papermill

    cli, _, out, shipped = fake_repo
    before = shipped.read_bytes()
    failure = papermill.PapermillExecutionError(
        cell_index=1, exec_count=2, source="load()", ename="DatasetError",
        evalue="Could not download CIFAR-100", traceback=[])
    outputs = _fake_papermill(monkeypatch, failure)
    assert cli.main(["run", "--out", str(out), "--notebooks", "Tiny.ipynb"]) == 1
    assert shipped.read_bytes() == before
    failed = out / "failed" / "Tiny.ipynb"
    assert outputs == [str(failed)] and json.loads(failed.read_text())["cells"] == []
    message = capsys.readouterr().err
    assert "DatasetError: Could not download CIFAR-100" in message
    assert str(failed) in message and f"{shipped} was left as it was" in message
    assert os.listdir(shipped.parent) == ["Tiny.ipynb"]  # no temporary files either


def test_interrupted_notebook_leaves_the_executed_copy_untouched(fake_repo, monkeypatch, capsys):
    cli, _, out, shipped = fake_repo
    before = shipped.read_bytes()
    _fake_papermill(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        cli.main(["run", "--out", str(out), "--notebooks", "Tiny.ipynb"])
    assert shipped.read_bytes() == before
    assert str(out / "failed" / "Tiny.ipynb") in capsys.readouterr().err


def test_successful_notebook_replaces_the_executed_copy(fake_repo, monkeypatch):
    cli, _, out, shipped = fake_repo
    outputs = _fake_papermill(monkeypatch, None)
    assert cli.main(["run", "--out", str(out), "--notebooks", "Tiny.ipynb"]) == 0
    kept = json.loads(shipped.read_text())
    # papermill's record names the notebook and its final place, relative to the output folder
    assert kept["metadata"]["papermill"]["output_path"] == "executed/Tiny.ipynb"
    assert kept["metadata"]["papermill"]["input_path"] == "Tiny.ipynb"
    assert os.listdir(shipped.parent) == ["Tiny.ipynb"]
    assert not os.path.exists(outputs[0])  # moved, not copied
    assert not (out / "failed").exists()  # no empty folder left behind


def test_failed_copies_of_the_repository_run_go_where_git_ignores_them():
    from cifar100cnn.__main__ import REPO_ROOT, failed_folder

    folder = failed_folder(REPO_ROOT)
    assert folder == os.path.join(REPO_ROOT, "runs", "failed")
    result = subprocess.run(["git", "check-ignore", "-q", os.path.join(folder, "Tiny.ipynb")],
                            cwd=REPO_ROOT, capture_output=True)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert result.returncode == 0, "runs/failed/ is not ignored by git"


@pytest.mark.slow
def test_a_notebook_that_fails_for_real_keeps_the_previous_executed_copy(fake_repo, capsys):
    """The same with papermill and a kernel for real: the second cell raises."""
    cli, repo, out, shipped = fake_repo
    _tiny_notebook(repo / "Tiny.ipynb", "raise RuntimeError('no internet here')")
    before = shipped.read_bytes()
    assert cli.main(["run", "--out", str(out), "--notebooks", "Tiny.ipynb"]) == 1
    assert shipped.read_bytes() == before
    failed = out / "failed" / "Tiny.ipynb"
    assert errors_in(failed)[0]["evalue"] == "no internet here"
    assert str(failed) in capsys.readouterr().err
