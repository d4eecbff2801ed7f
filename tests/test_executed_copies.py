"""Executed copies of CLI runs hold the notebooks' own output — no
TensorFlow C++ start-up lines, no tqdm widget warning, no absolute paths of the machine —
while real Python warnings stay, and interactive users keep every message."""

import json
import os
import warnings

import keras
import nbformat
import numpy as np
import pytest
from keras import layers

from cifar100cnn import __main__ as cli
from cifar100cnn import artifacts


def test_kernel_environment_quiets_only_the_cli_kernels():
    user = {"PYTHONWARNINGS": "error::ResourceWarning", "PYTHONPATH": "/elsewhere"}
    environment = cli.kernel_environment(environ=user)
    assert environment["TQDM_DISABLE"] == "1"
    assert environment["PYTHONWARNINGS"] == ("error::ResourceWarning,ignore:IProgress not found,"
                                             "ignore:sha256 check of")
    assert environment["PYTHONPATH"] == os.pathsep.join([cli.REPO_ROOT, "/elsewhere"])
    assert environment["TF_CPP_MIN_LOG_LEVEL"] == "1"  # INFO off; warnings and errors stay
    assert cli.kernel_environment(environ={"TF_CPP_MIN_LOG_LEVEL": "0"})["TF_CPP_MIN_LOG_LEVEL"] == "0"
    assert user == {"PYTHONWARNINGS": "error::ResourceWarning", "PYTHONPATH": "/elsewhere"}
    assert "--IPKernelApp.capture_fd_output=False" in cli.KERNEL_ARGUMENTS


def test_kernels_run_in_the_output_folder_with_relative_paths(tmp_path):
    parameters = cli.notebook_parameters(cli.parse_args(["run", "--quick", "--out", str(tmp_path)]))
    assert parameters["output_dir"] == str(tmp_path)  # the CLI itself keeps the full path
    assert cli.kernel_parameters(parameters)["output_dir"] == "."
    assert cli.kernel_parameters(parameters)["quick"] is True


PROBE = ["""\
import os, time, warnings
import tensorflow as tf
print("sum", float(tf.reduce_sum(tf.ones(3))), "in", os.path.relpath(os.getcwd(), output_dir))
""", """\
from tqdm.auto import tqdm
for _ in tqdm(range(3), desc="bar"):
    pass
warnings.warn("a real warning stays")
import cifar100cnn
print("package from", os.path.dirname(os.path.dirname(cifar100cnn.__file__)))
time.sleep(3)  # lets the kernel forward any captured C++ output before it shuts down
"""]


@pytest.mark.slow
def test_an_executed_copy_holds_only_the_notebooks_own_output(tmp_path, monkeypatch):
    """A kernel started the way ``run_notebooks`` starts it, on a notebook that imports
    TensorFlow, runs a tqdm bar and raises a warning (about 20 s)."""
    import papermill

    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                 "display_name": "Python 3"}})
    notebook.cells = [nbformat.v4.new_code_cell('output_dir = "/somewhere"')]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in PROBE]
    notebook.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(notebook, tmp_path / "probe.ipynb")
    for key, value in cli.kernel_environment().items():
        monkeypatch.setenv(key, value)
    # ipykernel never captures file descriptors under pytest (it looks for this variable):
    # without it the kernel behaves as in a real run, where C++ output would be captured.
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    parameters = cli.kernel_parameters({"output_dir": str(out)})
    papermill.execute_notebook(str(tmp_path / "probe.ipynb"), str(out / "probe.ipynb"),
                               parameters=parameters, cwd=str(out), kernel_name="python3",
                               extra_arguments=cli.KERNEL_ARGUMENTS, progress_bar=False)
    cells = json.loads((out / "probe.ipynb").read_text())["cells"]
    outputs = [o for cell in cells for o in cell.get("outputs", [])]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "sum 3.0 in .\n" in text
    assert "a real warning stays" in text
    assert f"package from {cli.REPO_ROOT}" in text
    for noise in ("I0000", "absl", "cuInit", "oneDNN", "cuda", "IProgress", "bar:"):
        assert noise not in text, noise
    injected = "".join(cells[1]["source"])
    assert 'output_dir = "."' in injected and str(tmp_path) not in injected


def test_loaded_models_take_plain_arrays_without_keras_warnings(tmp_path):
    inputs = keras.Input((32, 32, 3), name="image")
    outputs = layers.Dense(100, activation="softmax")(layers.GlobalAveragePooling2D()(inputs))
    listed = keras.Model([inputs], [outputs], name="listed")  # as older saves were
    listed.save(tmp_path / "old.keras")
    artifacts.save_model(listed, tmp_path / "new.keras")
    images = np.zeros((2, 32, 32, 3), np.uint8)
    for loaded in (artifacts.load_model(tmp_path / "old.keras"),
                   keras.models.load_model(tmp_path / "new.keras")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert loaded(images).shape == (2, 100)
        assert loaded.name == "listed"
