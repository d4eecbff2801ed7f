"""The environment the package runs in: the lowest TensorFlow, Keras and NumPy it works with,
checked when it is imported; the environment variables that stand in for parameters.

The variables (``CIFAR100_ARCHIVE``, ``CIFAR100_VERIFY``, ``VGG16_WEIGHTS``) are read here only,
by the edges that take parameters from a user: the CLIs and the notebooks' first code cells.
Library functions take explicit arguments and never read them.

Colab and other ready-made environments come with their own Keras. One older than ``MINIMUM``
cannot read the committed models (Keras 3.14 and older reject the initializers' config that
Keras 3.15 writes: "could not be deserialized properly"), so the package stops at import with
the command that fixes it instead of failing later, halfway through a notebook.

The check reads installed versions from the package metadata and imports nothing heavy. A module
already imported counts as what it is, not what was installed after it: an upgrade only takes
effect after a restart of the Python process (on Colab: Runtime > Restart session).

Set ``CIFAR100CNN_SKIP_VERSION_CHECK=1`` to turn the error into a warning (e.g. to try an older
Keras on purpose). The floors must agree with requirements.txt and pyproject.toml
(tests/test_environment.py checks it); README "Versions" says how they were found.
"""

import importlib.metadata
import os
import re
import sys
import warnings

# The lowest versions that really work (requirements.txt gives the reasons).
MINIMUM = {"tensorflow": "2.16", "keras": "3.15", "numpy": "1.26.1"}
# The names under which each can be installed; the first one found counts.
DISTRIBUTIONS = {
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel",
                   "tensorflow-macos", "tf-nightly"),
    "keras": ("keras", "keras-nightly"),
    "numpy": ("numpy",),
}
SKIP_VARIABLE = "CIFAR100CNN_SKIP_VERSION_CHECK"


class EnvironmentVersionError(ImportError):
    """An installed (or already imported) TensorFlow, Keras or NumPy is older than the floor."""


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


def install_command(module):
    """What to run to bring ``module`` up to its floor, within requirements.txt's range."""
    upper = {"tensorflow": ",<2.22", "keras": ",<4"}.get(module, "")
    return f'pip install -U "{module}>={MINIMUM[module]}{upper}"'


def problems():
    """One line per module that is missing, too old on disk, or too old in this process."""
    found = []
    for module, minimum in MINIMUM.items():
        on_disk, in_memory = installed_version(module), imported_version(module)
        command = install_command(module)
        if in_memory is not None and not _at_least(in_memory, minimum):
            if on_disk is not None and _at_least(on_disk, minimum):
                found.append(f"{module} {in_memory} is loaded in this process, but cifar100cnn "
                             f"needs {module}>={minimum} ({on_disk} is installed): restart the "
                             "runtime/kernel (Colab: Runtime > Restart session) and run again.")
            else:
                found.append(f"{module} {in_memory} is loaded, but cifar100cnn needs "
                             f"{module}>={minimum}: run `{command}` (in a notebook: "
                             f"`%{command}`), then restart the runtime/kernel (Colab: Runtime > "
                             "Restart session) and run again.")
        elif in_memory is None and on_disk is None:
            found.append(f"{module} is not installed: run `{command}` (or `pip install -e .` "
                         "in the repository).")
        elif in_memory is None and not _at_least(on_disk, minimum):
            found.append(f"{module} {on_disk} is installed, but cifar100cnn needs "
                         f"{module}>={minimum}: run `{command}` (in a notebook: `%{command}`), "
                         "then restart the runtime/kernel (Colab: Runtime > Restart session) "
                         "and run again.")
    return found


def check_versions():
    """Raise ``EnvironmentVersionError`` naming the fix when a floor is not met.

    With ``CIFAR100CNN_SKIP_VERSION_CHECK=1`` it warns instead. Returns the problems found.
    """
    found = problems()
    if found:
        message = ("cifar100cnn: this environment is older than the package needs (an older "
                   "Keras fails to load the committed models with 'could not be deserialized "
                   "properly').\n  " + "\n  ".join(found))
        if os.environ.get(SKIP_VARIABLE, "").strip() not in ("", "0"):
            warnings.warn(message + f"\n  (${SKIP_VARIABLE} is set: going on anyway.)",
                          stacklevel=2)
        else:
            raise EnvironmentVersionError(
                message + f"\n  (Set {SKIP_VARIABLE}=1 to go on anyway, at your own risk.)")
    return found


ARCHIVE_VARIABLE = "CIFAR100_ARCHIVE"  # a local cifar-100-python.tar.gz
VERIFY_VARIABLE = "CIFAR100_VERIFY"  # "0": skip the archive's sha256 check
WEIGHTS_VARIABLE = "VGG16_WEIGHTS"  # a local vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5


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
        weights: "imagenet" (default), a local ``.h5`` file, or None (random weights).
        quick: a smoke test (default False): "imagenet" means random weights, neither a
            58 MB download nor ``$VGG16_WEIGHTS``.
        environ: the environment (default ``os.environ``).

    Returns:
        ``weights``, except "imagenet": None in quick mode, else ``$VGG16_WEIGHTS`` when set.
    """
    environ = os.environ if environ is None else environ
    if weights != "imagenet":
        return weights
    if quick:
        return None
    return environ.get(WEIGHTS_VARIABLE) or weights
