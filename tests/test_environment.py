"""The version floors: the import-time check, its agreement with requirements.txt,
pyproject.toml and the lock files, and the committed models loading with this environment's
Keras (.ci/floors runs this file with the lowest versions requirements.txt allows)."""

import glob
import importlib.metadata
import importlib.util
import os
import re
import sys
import types

import pytest

from cifar100cnn import artifacts, environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as handle:
        return handle.read()


def pins(lock_text):
    """{name: version} of the ``name==version`` lines of a lock file (markers ignored)."""
    found = {}
    for line in lock_text.splitlines():
        match = re.match(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
        if match:
            found[match.group(1).lower().replace("_", "-")] = match.group(2)
    return found


def ranges(requirements_text):
    """{name: specifier} of the direct requirements (comments and ``-e .`` dropped)."""
    found = {}
    for line in requirements_text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            match = re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line)
            found[match.group(1).lower()] = match.group(2).replace(" ", "")
    return found


# ---------------------------------------------------------------------------
# The check itself, with made-up versions
# ---------------------------------------------------------------------------

@pytest.fixture
def versions(monkeypatch):
    """Set what is 'installed', what is 'imported' and the Keras backend:
    ``versions(disk={...}, loaded={...}, backend="tensorflow")``; modules left out are taken at
    their floor on disk (jax and torch at some version) and not imported."""
    def set_versions(disk=None, loaded=None, backend="tensorflow"):
        disk = {**environment.MINIMUM, "jax": "0.5.0", "torch": "2.6.0", **(disk or {})}
        loaded = loaded or {}
        monkeypatch.setattr(environment, "installed_version", lambda module: disk.get(module))
        monkeypatch.setattr(environment, "imported_version", lambda module: loaded.get(module))
        monkeypatch.setattr(environment, "keras_backend", lambda: backend)
    monkeypatch.delenv(environment.SKIP_VARIABLE, raising=False)
    return set_versions


KERAS_FLOOR = environment.MINIMUM["keras"]


def test_floors_pass(versions):
    versions()
    assert environment.check_versions() == []
    versions(disk={"keras": "3.15.1", "tensorflow": "2.21.0", "numpy": "2.4.6"},
             loaded={"keras": "3.15.0", "numpy": "1.26.4"})
    assert environment.check_versions() == []


def test_older_keras_on_disk_names_the_upgrade_and_the_restart(versions):
    versions(disk={"keras": "3.7.0"})
    with pytest.raises(environment.EnvironmentVersionError) as caught:
        environment.check_versions()
    message = str(caught.value)
    assert f"keras 3.7.0 is installed, but cifar100cnn needs keras>={KERAS_FLOOR}" in message
    assert f'%pip install -U "keras>={KERAS_FLOOR},<4"' in message
    assert "Restart session" in message and "not installed" not in message
    assert "tensorflow" not in message.split("\n", 1)[1]  # only the module that is too old


def test_older_keras_already_imported_after_an_upgrade_asks_for_a_restart(versions):
    versions(disk={"keras": "3.15.1"}, loaded={"keras": "3.7.2"})
    with pytest.raises(ImportError, match=r"keras 3\.7\.2 is loaded in this process.*"
                                          r"\(3\.15\.1 is installed\): restart the runtime"):
        environment.check_versions()


def test_older_tensorflow_and_numpy_and_a_missing_keras_are_all_reported(versions):
    versions(disk={"tensorflow": "2.15.1", "numpy": "1.26.0", "keras": None})
    problems = environment.problems()
    assert len(problems) == 3
    assert problems[0].startswith("keras is not installed: run `pip install -U \"keras>=")
    assert 'numpy 1.26.0 is installed' in problems[1] and 'pip install -U "numpy>=1.26.1"' in problems[1]
    assert 'tensorflow 2.15.1 is installed' in problems[2]
    assert 'pip install -U "tensorflow>=2.16,<2.22"' in problems[2]


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_tensorflow_is_needed_only_as_the_backend(versions, backend):
    """With JAX or PyTorch as the backend a missing (or old) TensorFlow is no problem; a missing
    backend package is named as missing, with the backend it is missing for."""
    versions(disk={"tensorflow": None}, backend=backend)
    assert environment.check_versions() == []
    versions(disk={"tensorflow": "2.10.0"}, backend=backend)
    assert environment.check_versions() == []
    versions(disk={"tensorflow": None, backend: None}, backend=backend)
    assert environment.problems() == [
        f"{backend} is not installed (the Keras backend is {backend}): run `pip install "
        f"{backend}`."]


def test_a_missing_tensorflow_is_told_from_an_old_one(versions):
    versions(disk={"tensorflow": None})
    with pytest.raises(environment.EnvironmentVersionError) as caught:
        environment.check_versions()
    message = str(caught.value)
    assert "tensorflow is not installed (the Keras backend is tensorflow): run " in message
    assert "KERAS_BACKEND=jax" in message and "older" not in message and "needs" not in message
    versions(disk={"tensorflow": "2.15.1"})
    assert "tensorflow 2.15.1 is installed, but cifar100cnn needs tensorflow>=2.16" in \
        environment.problems()[0]


def test_the_backend_is_found_as_keras_finds_it(monkeypatch, tmp_path):
    """Without importing Keras: $KERAS_BACKEND, else keras.json in $KERAS_HOME, else tensorflow
    (a loaded Keras answers for itself; the stand-in below has no backend)."""
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(__version__="3.15.0"))
    home = {"KERAS_HOME": str(tmp_path)}
    assert environment.keras_backend(home) == "tensorflow"
    (tmp_path / "keras.json").write_text('{"backend": "torch", "floatx": "float32"}')
    assert environment.keras_backend(home) == "torch"
    assert environment.keras_backend({**home, "KERAS_BACKEND": "jax"}) == "jax"
    loaded = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "numpy"))
    monkeypatch.setitem(sys.modules, "keras", loaded)
    assert environment.keras_backend({"KERAS_BACKEND": "jax"}) == "numpy"


def test_the_variable_turns_the_error_into_a_warning(versions, monkeypatch):
    versions(disk={"keras": "3.3.3"})
    monkeypatch.setenv(environment.SKIP_VARIABLE, "1")
    with pytest.warns(UserWarning, match="going on anyway"):
        assert len(environment.check_versions()) == 1
    monkeypatch.setenv(environment.SKIP_VARIABLE, "0")
    with pytest.raises(environment.EnvironmentVersionError):
        environment.check_versions()


def test_the_package_import_runs_the_check(monkeypatch):
    """A fresh ``import cifar100cnn`` with an old Keras loaded fails with the check's error."""
    monkeypatch.delenv(environment.SKIP_VARIABLE, raising=False)
    monkeypatch.setitem(sys.modules, "keras", types.SimpleNamespace(__version__="3.3.0"))
    for name in [name for name in sys.modules if name.split(".")[0] == "cifar100cnn"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"keras 3\.3\.0 is loaded"):
        __import__("cifar100cnn")


@pytest.mark.parametrize("text, expected", [
    ("3.15.1", (3, 15, 1)), ("2.16", (2, 16)), ("3.16.0.dev2026112603", (3, 16, 0)),
    ("2.21.0rc1", (2, 21, 0)), ("1.26.4+local", (1, 26, 4))])
def test_parse_version(text, expected):
    assert environment.parse_version(text) == expected


def test_comparison_pads_missing_parts():
    assert environment._at_least("3.15", "3.15.0") and environment._at_least("3.15.0", "3.15")
    assert environment._at_least("2.16.1", "2.16") and not environment._at_least("1.26.0", "1.26.1")
    assert not environment._at_least("3.9.2", "3.15") and environment._at_least("10.0", "3.15")


def test_this_environment_meets_the_floors():
    assert environment.problems() == []


# ---------------------------------------------------------------------------
# One set of floors everywhere; the lock files fit the ranges
# ---------------------------------------------------------------------------

def test_floors_agree_with_requirements_and_pyproject():
    required = ranges(read("requirements.txt"))
    project = re.search(r"dependencies = \[(.*?)\]", read("pyproject.toml"), re.S).group(1)
    declared = ranges("\n".join(re.findall(r'"([^"]+)"', project)))
    assert declared == {name: spec for name, spec in required.items() if name != "pytest"}
    for module, minimum in environment.MINIMUM.items():
        assert re.search(rf"(^|,)>={re.escape(minimum)}(,|$)", required[module]), module
    assert 'requires-python = ">=3.11"' in read("pyproject.toml")  # what the locks are made for


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-floor.txt"])
def test_lock_files_satisfy_the_ranges(lock):
    from packaging.specifiers import SpecifierSet

    text = read(lock)
    assert "make lock" in text.splitlines()[1]  # generated, refreshable with one command
    pinned = pins(text)
    for name, spec in ranges(read("requirements.txt")).items():
        assert name in pinned, f"{lock} lacks {name}: run `make lock`"
        assert pinned[name] in SpecifierSet(spec), f"{lock}: {name}=={pinned[name]} not in {spec}"


def test_floor_file_pins_the_floors():
    pinned = pins(read("requirements-floor.txt"))
    for module, minimum in environment.MINIMUM.items():
        assert environment.parse_version(pinned[module])[:len(environment.parse_version(
            minimum))] == environment.parse_version(minimum), (module, pinned[module])


# ---------------------------------------------------------------------------
# What the floors are for: the committed models load with this environment's Keras
# ---------------------------------------------------------------------------

COMMITTED = sorted(glob.glob(os.path.join(ROOT, "models", "*.keras")))


@pytest.mark.skipif(not COMMITTED, reason="no committed models in models/")
@pytest.mark.parametrize("path", COMMITTED, ids=os.path.basename)
def test_committed_model_loads(path):
    import keras

    model = artifacts.load_model(path)
    assert model.output_shape[-1] == 100
    print(f"{os.path.basename(path)} loads with keras {keras.__version__} "
          f"(installed: {importlib.metadata.version('keras')})")


def test_a_jupyter_kernel_starts_and_runs_a_cell():
    """The notebooks' runner needs a kernel: ipykernel 6.0-6.4 (once allowed by requirements.txt)
    died at start-up for a module they did not declare. A fast test, so the floor run has it."""
    from jupyter_client.manager import start_new_kernel

    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=120)
    try:
        reply = client.execute_interactive("print(6 * 7)", timeout=60, output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok"
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_onednn_is_asked_for_on_x86_64(machine):
    environ = {}
    assert environment.prefer_onednn(environ, machine, modules={})
    assert environ == {"TF_ENABLE_ONEDNN_OPTS": "1"}


@pytest.mark.parametrize("environ, machine, modules", [
    ({"TF_ENABLE_ONEDNN_OPTS": "0"}, "x86_64", {}),  # the user's choice wins
    ({}, "aarch64", {}),  # Arm: TensorFlow's own default
    ({}, "x86_64", {"tensorflow": types.ModuleType("tensorflow")}),  # too late to matter
])
def test_onednn_is_left_alone(environ, machine, modules):
    before = dict(environ)
    assert not environment.prefer_onednn(environ, machine, modules)
    assert environ == before


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow not installed")
def test_importing_the_package_first_turns_tensorflows_onednn_on():
    import platform
    import subprocess

    if platform.machine().lower() not in environment.X86_64:
        pytest.skip("oneDNN is asked for on x86-64 only")
    code = ("import cifar100cnn, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port as port\n"
            "print(port.IsMklEnabled())")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
