"""The environment the package runs in: the lowest Keras, NumPy and (on its backend) TensorFlow
it works with, checked when it is imported; the environment variables that stand in for
parameters.

The variables (``CIFAR100_ARCHIVE``, ``CIFAR100_VERIFY``, ``VGG16_WEIGHTS``) are read here only,
by the edges that take parameters from a user: the CLIs and the notebooks' first code cells.
Library functions take explicit arguments and never read them.

Colab and other ready-made environments come with their own Keras. One older than ``MINIMUM``
lacks what the package's code uses, so the package stops at import with the command that fixes
it instead of failing later, halfway through a notebook. TensorFlow is needed only when it is
the Keras backend: with ``KERAS_BACKEND=jax`` or ``torch`` the package imports without it.

The check reads installed versions from the package metadata and the backend from
``KERAS_BACKEND`` or Keras' own ``keras.json``, and imports nothing heavy. A module already
imported counts as what it is, not what was installed after it: an upgrade only takes effect
after a restart of the Python process (on Colab: Runtime > Restart session).

Set ``CIFAR100CNN_SKIP_VERSION_CHECK=1`` to turn the error into a warning (e.g. to try an older
Keras on purpose). The floors must agree with requirements.txt and pyproject.toml
(tests/test_environment.py checks it); docs/portability.md says how they were found.
"""

import importlib.metadata
import json
import os
import re
import sys
import warnings

# The lowest versions that really work (requirements.txt gives the reasons). TensorFlow's
# counts only when it is the Keras backend.
MINIMUM = {"tensorflow": "2.16", "keras": "3.10", "numpy": "1.26.1"}
# The names under which each can be installed; the first one found counts.
DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel",
                   "tensorflow-macos", "tf-nightly"),
    "keras": ("keras", "keras-nightly"),
    "numpy": ("numpy",),
    "jax": ("jax",),
    "torch": ("torch",),
}
# The package each Keras backend runs on ("numpy" and "openvino" are inference-only backends
# the package does not support; the check leaves them to Keras).
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
SKIP_VARIABLE = "CIFAR100CNN_SKIP_VERSION_CHECK"
BACKEND_VARIABLE = "KERAS_BACKEND"


class EnvironmentVersionError(ImportError):
    """An installed (or already imported) Keras, NumPy or backend is missing or too old."""


def parse_version(text):
    """The leading release numbers of a version string: '3.15.1.dev2026' -> (3, 15, 1)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def _at_least(version, minimum):
    found, floor = parse_version(version), parse_version(minimum)
    width = max(len(found), len(floor))
    return found + (0,) * (width - len(found)) >= floor + (0,) * (width - len(floor))


def installed_version(module):
    """The version of ``module`` installed on disk, or ``None`` when it is not installed."""
    for distribution in DISTRIBUTIONS.get(module, (module,)):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def imported_version(module):
    """The version of ``module`` when this process has imported it already, else ``None``."""
    loaded = sys.modules.get(module)
    version = getattr(loaded, "__version__", None)
    return str(version) if version is not None else None


def keras_backend(environ=None):
    """The Keras backend this process uses or will use, found as Keras finds it but without
    importing Keras: the loaded Keras' own answer, else ``$KERAS_BACKEND``, else the
    ``backend`` of ``keras.json`` (in ``$KERAS_HOME`` or ``~/.keras``), else "tensorflow"."""
    loaded = sys.modules.get("keras")
    backend = getattr(getattr(loaded, "backend", None), "backend", None)
    if callable(backend):
        try:
            return str(backend())
        except Exception:  # a stand-in or half-imported module: fall back to the settings
            pass
    environ = os.environ if environ is None else environ
    if environ.get(BACKEND_VARIABLE):
        return environ[BACKEND_VARIABLE].strip()
    folder = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(folder, "keras.json")) as handle:
            return str(json.load(handle).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def required_modules(backend):
    """The modules the package needs with ``backend``: Keras, NumPy and the backend's own."""
    package = BACKEND_PACKAGES.get(backend)
    return ["keras", "numpy"] + ([package] if package else [])


def install_command(module):
    """What to run to install ``module`` or bring it up to its floor, within requirements.txt's
    range."""
    if module not in MINIMUM:
        return f"pip install {module}"
    upper = {"tensorflow": ",<2.22", "keras": ",<4"}.get(module, "")
    return f'pip install -U "{module}>={MINIMUM[module]}{upper}"'


def _restart_hint(command):
    return (f"run `{command}` (in a notebook: `%{command}`), then restart the runtime/kernel "
            "(Colab: Runtime > Restart session) and run again.")


def problems(backend=None):
    """One line per module that is missing, too old on disk, or too old in this process.

    Args:
        backend: the Keras backend (default: ``keras_backend()``); TensorFlow is required only
            when it is "tensorflow".
    """
    backend = keras_backend() if backend is None else backend
    found = []
    for module in required_modules(backend):
        minimum = MINIMUM.get(module)  # None for jax and torch: any version Keras accepts
        on_disk, in_memory = installed_version(module), imported_version(module)
        command = install_command(module)
        if in_memory is None and on_disk is None:
            why = f" (the Keras backend is {backend})" if module == BACKEND_PACKAGES.get(
                backend) else ""
            declared = " (in the repository: `pip install -e .`)" if minimum else ""
            other = (", or choose another backend: `KERAS_BACKEND=jax` with jax installed"
                     if module == "tensorflow" else "")
            found.append(f"{module} is not installed{why}: run `{command}`{declared}{other}.")
        elif minimum is None:
            continue
        elif in_memory is not None and not _at_least(in_memory, minimum):
            if on_disk is not None and _at_least(on_disk, minimum):
                found.append(f"{module} {in_memory} is loaded in this process, but cifar100cnn "
                             f"needs {module}>={minimum} ({on_disk} is installed): restart the "
                             "runtime/kernel (Colab: Runtime > Restart session) and run again.")
            else:
                found.append(f"{module} {in_memory} is loaded, but cifar100cnn needs "
                             f"{module}>={minimum}: " + _restart_hint(command))
        elif in_memory is None and not _at_least(on_disk, minimum):
            found.append(f"{module} {on_disk} is installed, but cifar100cnn needs "
                         f"{module}>={minimum}: " + _restart_hint(command))
    return found


def check_versions(backend=None):
    """Raise ``EnvironmentVersionError`` naming the fix when a package is missing or older than
    its floor (``backend`` as for ``problems``).

    With ``CIFAR100CNN_SKIP_VERSION_CHECK=1`` it warns instead. Returns the problems found.
    """
    found = problems(backend)
    if found:
        message = "cifar100cnn cannot run in this environment:\n  " + "\n  ".join(found)
        if os.environ.get(SKIP_VARIABLE, "").strip() not in ("", "0"):
            warnings.warn(message + f"\n  (${SKIP_VARIABLE} is set: going on anyway.)",
                          stacklevel=2)
        else:
            raise EnvironmentVersionError(
                message + f"\n  (Set {SKIP_VARIABLE}=1 to go on anyway, at your own risk.)")
    return found


ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86_64 = ("x86_64", "amd64")


def prefer_onednn(environ=None, machine=None, modules=None):
    """Turn TensorFlow's oneDNN kernels on for every x86-64 CPU, unless the user chose.

    TensorFlow turns them on by itself only on CPUs with its neural-network instructions
    (AVX-512 VNNI or BF16, AMX). Elsewhere, as on AVX2-only CPUs such as AMD's Zen 2 and 3, it
    runs Eigen's kernels, with which the tuned third model trains 1.9 times slower in float32
    and predicts 1.2 times slower (docs/hardware.md). The variable is read when TensorFlow is
    imported, so this runs before: at the package's import, and in the kernels of a CLI run.

    Args:
        environ: the environment to complete (default ``os.environ``).
        machine: the CPU architecture (default ``platform.machine()``).
        modules: the imported modules (default ``sys.modules``).

    Returns:
        True when it set ``TF_ENABLE_ONEDNN_OPTS=1``; False when the variable was set
        already, the CPU is not x86-64, or TensorFlow is imported already (too late).
    """
    import platform

    environ = os.environ if environ is None else environ
    machine = platform.machine() if machine is None else machine
    modules = sys.modules if modules is None else modules
    if ONEDNN_VARIABLE in environ or machine.lower() not in X86_64 or "tensorflow" in modules:
        return False
    environ[ONEDNN_VARIABLE] = "1"
    return True


ARCHIVE_VARIABLE = "CIFAR100_ARCHIVE"  # a local cifar-100-python.tar.gz
VERIFY_VARIABLE = "CIFAR100_VERIFY"  # "0": skip the archive's sha256 check
WEIGHTS_VARIABLE = "VGG16_WEIGHTS"  # a local vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
# The weights parameter that means "the file in $VGG16_WEIGHTS", in every mode: how the CLI
# passes a file given on its command line without writing its path into the notebook.
WEIGHTS_FROM_VARIABLE = f"${WEIGHTS_VARIABLE}"


def archive_settings(archive=None, verify=True, environ=None):
    """The CIFAR-100 archive to read and whether to check its sha256, from the parameters
    completed by the environment.

    Args:
        archive: a local ``cifar-100-python.tar.gz``, or None (default): ``$CIFAR100_ARCHIVE``
            when set, else None (Keras downloads the dataset).
        verify: check the archive against the official sha256 (default True);
            ``CIFAR100_VERIFY=0`` turns the check off.
        environ: the environment (default ``os.environ``).

    Returns:
        ``(archive, verify)``.
    """
    environ = os.environ if environ is None else environ
    archive = archive or environ.get(ARCHIVE_VARIABLE) or None
    return archive, bool(verify) and environ.get(VERIFY_VARIABLE, "1") != "0"


def vgg16_weights(weights="imagenet", quick=False, environ=None):
    """The VGG16 weights to use, from the parameter completed by the environment.

    Args:
        weights: "imagenet" (default), a local ``.h5`` file, None (random weights), or
            ``WEIGHTS_FROM_VARIABLE`` (the file named by ``$VGG16_WEIGHTS``, even in quick mode).
        quick: a smoke test (default False): "imagenet" means random weights, neither a
            58 MB download nor ``$VGG16_WEIGHTS``.
        environ: the environment (default ``os.environ``).

    Returns:
        ``weights``, except "imagenet": None in quick mode, else ``$VGG16_WEIGHTS`` when set.
    """
    environ = os.environ if environ is None else environ
    if weights == WEIGHTS_FROM_VARIABLE:
        if not environ.get(WEIGHTS_VARIABLE):
            raise ValueError(f"vgg16_weights={weights!r} but ${WEIGHTS_VARIABLE} is not set")
        return environ[WEIGHTS_VARIABLE]
    if weights != "imagenet":
        return weights
    if quick:
        return None
    return environ.get(WEIGHTS_VARIABLE) or weights
