"""``python -m cifar100cnn run`` as a user meets it: where a run writes (never the repository's
record), the committed models it starts from, executed copies without paths of the machine,
the progress it prints, the training record of a reused model, and its options."""

import json
import os
import re
import time

import pytest

from cifar100cnn import __main__ as cli
from cifar100cnn import environment, progress, runner, training_record
from cifar100cnn.artifacts import MODEL_FILES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------

def test_an_unknown_notebook_is_an_error_that_lists_the_valid_names(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(["run", "--notebooks", "Foo.ipynb"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "Foo.ipynb" in message
    assert all(name in message for name in runner.NOTEBOOKS)


def test_notebooks_may_be_named_without_their_suffix():
    args = cli.parse_args(["run", "--notebooks", "TestModels", "VisualizeModel.ipynb"])
    assert args.notebooks == ["TestModels.ipynb", "VisualizeModel.ipynb"]


@pytest.mark.parametrize("preset", ["tuned", "original", "robust"])
def test_each_third_preset_reaches_the_notebook_and_names_a_recipe(preset):
    from cifar100cnn import recipes

    parameters = cli.notebook_parameters(cli.parse_args(["run", "--third-preset", preset]))
    passed = cli.notebook_arguments(os.path.join(REPO, "ThirdModel.ipynb"), parameters)
    assert passed["third_preset"] == preset
    assert recipes.recipe(f"third_{preset}") is not None


def test_an_unknown_third_preset_is_an_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(["run", "--third-preset", "robustest"])
    assert stopped.value.code == 2 and "robust" in capsys.readouterr().err


def _run_parser():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_run_options(parser)
    return parser


def test_every_run_option_has_help():
    missing = [action.dest for action in _run_parser()._actions
               if action.dest != "help" and not action.help]
    assert missing == []


def test_readme_and_help_agree_on_quick_mode():
    quick = next(action for action in _run_parser()._actions if action.dest == "quick")
    assert "1 epoch per model" in quick.help
    with open(os.path.join(REPO, "README.md")) as handle:
        readme = handle.read()
    said = re.findall(r"--quick.*?(\d+(?:-\d+)?) epochs?", readme)
    assert said and set(said) == {"1"}, said


def test_record_mode_takes_no_other_output(capsys):
    assert cli.main(["run", "--record", "--quick"]) == 2
    assert "--record" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Where a run writes; the models it starts from
# ---------------------------------------------------------------------------

def test_a_users_run_writes_where_git_ignores_it():
    import subprocess

    folder = runner.output_folder("cifar100")
    assert folder == os.path.join(REPO, "runs", "cifar100")
    probe = os.path.join(folder, "models", "results.csv")
    result = subprocess.run(["git", "check-ignore", "-q", probe], cwd=REPO, capture_output=True)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert result.returncode == 0, "runs/ is not ignored by git"
    assert runner.output_folder("cifar100", record=True) == runner.REPO_ROOT


def _committed(folder, name, content):
    paths = runner.model_files(name, str(folder))
    os.makedirs(folder, exist_ok=True)
    for path in paths[:2]:
        with open(path, "w") as handle:
            handle.write(content)
    return paths


def test_a_run_starts_from_copies_of_the_committed_models(tmp_path):
    committed, run = tmp_path / "committed", tmp_path / "run" / "models"
    _committed(committed, "baseline", "v1")
    assert runner.seed_models(str(run), str(committed)) == ["baseline"]
    copy = run / MODEL_FILES["baseline"]
    assert copy.read_text() == "v1"
    # A committed model that changed (git pull) refreshes the untouched copy ...
    _committed(committed, "baseline", "v2")
    runner.seed_models(str(run), str(committed))
    assert copy.read_text() == "v2"
    # ... but never a model the user trained in the run folder.
    copy.write_text("mine")
    assert runner.seed_models(str(run), str(committed)) == []
    assert copy.read_text() == "mine"
    assert (committed / MODEL_FILES["baseline"]).read_text() == "v2"


def test_the_repository_is_never_seeded_from_itself():
    models = os.path.join(runner.REPO_ROOT, "models")
    assert runner.seed_models(models, models) == []


# ---------------------------------------------------------------------------
# Executed copies: no path of the machine
# ---------------------------------------------------------------------------

def test_kernels_get_no_absolute_path_as_a_parameter(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    weights = tmp_path / "vgg16.h5"
    args = cli.parse_args(["run", "--archive", str(archive), "--vgg16-weights", str(weights)])
    parameters = cli.notebook_parameters(args, {})
    passed = runner.kernel_parameters(parameters)
    assert str(tmp_path) not in json.dumps(passed)
    variables = runner.kernel_environment(parameters, {})
    assert variables["CIFAR100_ARCHIVE"] == str(archive)
    assert variables["VGG16_WEIGHTS"] == str(weights)
    # The notebook then reads the file from $VGG16_WEIGHTS, in quick mode too (where
    # "imagenet" means random weights): a file given on the command line is never ignored.
    for quick in (False, True):
        assert environment.vgg16_weights(passed["vgg16_weights"], quick, variables) == str(weights)


def test_the_kept_copy_holds_relative_paths_only(tmp_path):
    out = tmp_path / "out"
    notebook = {
        "metadata": {"papermill": {"input_path": f"{runner.REPO_ROOT}/TrainingModels.ipynb",
                                   "output_path": f"{out}/failed/TrainingModels.ipynb",
                                   "parameters": {"output_dir": "."}}},
        "cells": [{"cell_type": "code", "source": "", "outputs": [
            {"output_type": "stream", "name": "stdout",
             "text": [f"Saved to {out}/models/x.keras\n", f"cwd {out}\n",
                      f"{runner.REPO_ROOT}/cifar100cnn/data.py:1: UserWarning\n",
                      f"{out}-other/y\n"]}]}]}
    runner.clean_record(notebook, "TrainingModels.ipynb", str(out / "executed" / "TrainingModels.ipynb"), str(out))
    record = notebook["metadata"]["papermill"]
    assert record["input_path"] == "TrainingModels.ipynb"
    assert record["output_path"] == "executed/TrainingModels.ipynb"
    text = notebook["cells"][0]["outputs"][0]["text"]
    assert text[:3] == ["Saved to models/x.keras\n", "cwd .\n", "cifar100cnn/data.py:1: UserWarning\n"]
    assert text[3] == f"{out}-other/y\n"  # another folder that only starts with the same name


def test_the_files_a_run_read_appear_by_name_only(tmp_path):
    archive = tmp_path / "data" / "cifar-100-python.tar.gz"
    notebook = {"cells": [{"cell_type": "code", "source": "", "outputs": [
        {"output_type": "stream", "name": "stderr", "text": f"sha256 check of {archive} skipped\n"}]}]}
    runner.clean_record(notebook, "T.ipynb", str(tmp_path / "executed" / "T.ipynb"), str(tmp_path),
                        files=[str(archive)])
    assert notebook["cells"][0]["outputs"][0]["text"] == "sha256 check of cifar-100-python.tar.gz skipped\n"


# ---------------------------------------------------------------------------
# Progress on the terminal
# ---------------------------------------------------------------------------

CELLS = [{"cell_type": "markdown", "source": "# Training"},
         {"cell_type": "code", "source": "x = 1", "metadata": {"tags": ["parameters"]}},
         {"cell_type": "markdown", "source": "## Model 1: the baseline"},
         {"cell_type": "markdown", "source": "**Train it.** More words."},
         {"cell_type": "code", "source": "train()", "metadata": {}},
         {"cell_type": "code", "source": "vgg16()", "metadata": {}}]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_names_the_notebook_the_step_and_the_time_left(capsys):
    clock = Clock()
    reporter = progress.Progress("TrainingModels.ipynb", 1, 4, estimates={"train()": 600}, clock=clock)
    reporter.cell_start(CELLS, 1)
    reporter.cell_start(CELLS, 4)
    for epoch in (1, 2):
        reporter.write(f"Epoch {epoch}/10\n")
        clock.now += 60
        reporter.write(f"79/79 - 60s - 1s/step - accuracy: 0.5 - val_accuracy: 0.{epoch}5 - val_loss: 2\n")
    reporter.cell_start(CELLS, 5)
    reporter.write("Skipped: VGG16 transfer, nothing saved (no ImageNet weights). To train it: ...\n")
    reporter.write("a long explanation the terminal does not need\n")
    assert reporter.stop() == 120
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        "[1/4] TrainingModels.ipynb",
        "  step 1/3: Training",
        "  step 2/3: Model 1: the baseline: Train it (took 10.0 min in the previous run)",
        "    epoch 1/10, val_accuracy 0.1500 (60 s, about 9.0 min left)",
        "    epoch 2/10, val_accuracy 0.2500 (60 s, about 8.0 min left)",
        "    done in 2.0 min",
        "  step 3/3: Model 1: the baseline",
        "    Skipped: VGG16 transfer, nothing saved (no ImageNet weights). To train it: ...",
    ]


def test_a_resumed_training_estimates_from_the_epochs_it_runs(capsys):
    clock = Clock()
    reporter = progress.Progress("ThirdModel.ipynb", clock=clock)
    reporter.cell_start(CELLS, 4)
    for epoch in (12, 13):
        reporter.write(f"Epoch {epoch}/16\n")
        clock.now += 80
        reporter.write("79/79 - 80s - 1s/step - accuracy: 0.5\n")
    assert "epoch 13/16 (80 s, about 4.0 min left)" in capsys.readouterr().out


def test_previous_durations_come_from_the_executed_copy(tmp_path):
    copy = tmp_path / "executed.ipynb"
    copy.write_text(json.dumps({"cells": [
        {"cell_type": "code", "source": ["train(", ")"], "metadata": {"papermill": {"duration": 42.0}}},
        {"cell_type": "markdown", "source": "x", "metadata": {}}]}))
    assert runner.previous_durations(str(tmp_path / "missing.ipynb"), str(copy)) == {"train()": 42.0}


# ---------------------------------------------------------------------------
# The training record of a model
# ---------------------------------------------------------------------------

def _history(folder, name, epochs=3):
    history = {"accuracy": [0.1 * e for e in range(1, epochs + 1)], "loss": [3.0] * epochs,
               "val_accuracy": [0.2, 0.4, 0.3][:epochs], "val_loss": [2.0] * epochs,
               "seconds": [10.0] * epochs}
    os.makedirs(folder, exist_ok=True)
    path = runner.model_files(name, str(folder))[1]
    with open(path, "w") as handle:
        json.dump(history, handle)
    return history


def test_a_model_trained_in_this_run_gets_its_record(tmp_path):
    started = time.time() - 5
    history = _history(tmp_path, "baseline")
    text = training_record.report("baseline", str(tmp_path), history, "precision float32", started)
    assert text.startswith("Trained baseline in this run: 3 epochs; the epoch kept: 2")
    record = training_record.load("baseline", str(tmp_path))
    assert record["setup"] == "precision float32" and record["machine"]


def test_a_reused_model_shows_when_where_and_its_epochs(tmp_path):
    history = _history(tmp_path, "baseline")
    training_record.save("baseline", str(tmp_path), "TensorFlow 2.x; precision mixed_bfloat16")
    text = training_record.report("baseline", str(tmp_path), history, "today's setup", time.time() + 60)
    first, *rest = text.splitlines()
    assert first.startswith("Trained ") and "UTC on " in first and "mixed_bfloat16" in first
    assert "today's setup" not in text
    assert rest[1].split()[:3] == ["epoch", "accuracy", "val_accuracy"]
    assert rest[3].startswith("   2*")  # the epoch kept
    assert len(rest) == 2 + 3


def test_a_record_of_another_training_is_not_shown(tmp_path):
    _history(tmp_path, "baseline")
    training_record.save("baseline", str(tmp_path), "precision float32")
    history = _history(tmp_path, "baseline", epochs=2)  # trained again, without a new record
    text = training_record.report("baseline", str(tmp_path), history, "setup", time.time() + 60)
    assert text.startswith(training_record.NOT_RECORDED)


def test_every_committed_model_has_a_record_of_its_history():
    models = os.path.join(REPO, "models")
    for name in MODEL_FILES:
        if os.path.exists(runner.model_files(name, models)[0]):
            assert training_record.load(name, models) is not None, name


def test_the_training_record_names_the_gpus_the_backend_sees(monkeypatch):
    from cifar100cnn import hardware

    monkeypatch.setattr(hardware, "gpu_names", lambda: ["NVIDIA H200"])
    assert training_record.machine().endswith(f"{os.cpu_count()} cores; NVIDIA H200")
    monkeypatch.setattr(hardware, "gpu_names", lambda: [])
    assert training_record.machine().endswith(f"{os.cpu_count()} cores")


@pytest.mark.parametrize("argv, message", [
    (["run", "--third-epochs", "0"], "--third-epochs: expected a whole number 1 or more, got '0'"),
    (["run", "--vgg16-input-size", "10"], "--vgg16-input-size: expected a whole number from 32 to 224, got '10'"),
    (["run", "--vgg16-input-size", "big"], "expected a whole number from 32 to 224, got 'big'"),
    (["predict", "cat.png", "--top", "101"], "--top: expected a whole number from 1 to 100, got '101'"),
])
def test_numbers_out_of_range_stop_at_the_command_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.parse_args(argv)
    assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_vgg16_input_sizes_of_the_command_line_are_those_the_model_takes():
    from cifar100cnn import transfer

    for size in (31, 32, 224, 225):
        accepted = cli.parse_args(["run", "--vgg16-input-size", str(size)]) if size in transfer.VGG16_INPUT_SIZES else None
        if accepted is None:
            with pytest.raises(SystemExit):
                cli.parse_args(["run", "--vgg16-input-size", str(size)])
        else:
            assert accepted.vgg16_input_size == size
