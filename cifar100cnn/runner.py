"""Running the four notebooks with papermill: where a run writes, which models it starts from,
and executed copies that hold the notebooks' own output and no path of the machine.

Two kinds of run (``python -m cifar100cnn run``):

- a user's run writes under ``runs/`` (git ignores it): ``runs/cifar100`` for CIFAR-100,
  starting from copies of the committed models, ``runs/quick`` and ``runs/synthetic`` for the
  made-up data, or ``--out``. The repository's own files are never written.
- ``--record`` (maintainers) writes the committed record in the repository itself:
  ``models/``, ``arrays/``, ``figures/`` and ``executed/``.
"""

import hashlib
import json
import os
import re
import shutil
import sys

from . import environment, progress
from .artifacts import MODEL_FILES, atomic_path, history_path

NOTEBOOKS = ("TrainingModels.ipynb", "ThirdModel.ipynb", "TestModels.ipynb", "VisualizeModel.ipynb")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDED_MANIFEST = ".seeded.json"  # which model files a run folder holds as untouched copies

# The kernel's own log (ipykernel's warnings, "KeyboardInterrupt caught in kernel" as papermill
# stops it) and TensorFlow's C++ log, which is written to file descriptor 2 before any log
# level applies, go to a log file: with the kernel's fd capture off they reach neither the
# executed copy nor the terminal. Interactive users keep every message.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]


def output_folder(data="cifar100", quick=False, out=None, record=False):
    """The folder a run writes to (absolute).

    Args:
        data: "cifar100" or "synthetic".
        quick: a smoke test on tiny synthetic data.
        out: a folder given by the user (wins over everything else).
        record: the maintainers' run that writes the committed record (the repository).
    """
    if out:
        return os.path.abspath(out)
    if record:
        return REPO_ROOT
    if quick:
        return os.path.join(REPO_ROOT, "runs", "quick")
    if data == "synthetic":
        return os.path.join(REPO_ROOT, "runs", "synthetic")
    return os.path.join(REPO_ROOT, "runs", "cifar100")


def failed_folder(output_dir):
    """Where papermill writes a notebook while it runs, and where the copy stays when the run
    fails or is interrupted: never ``executed/``, whose copies are the record of the last
    successful run. ``runs/failed`` for the repository (git ignores ``runs/``),
    ``<output_dir>/failed`` for any other output folder; removed again when empty."""
    output_dir = os.path.abspath(output_dir)
    if output_dir == os.path.abspath(REPO_ROOT):
        return os.path.join(output_dir, "runs", "failed")
    return os.path.join(output_dir, "failed")


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(name, models_dir):
    """The files that belong to model ``name``: the model, its history, its training record."""
    history = history_path(name, models_dir)
    return [os.path.join(models_dir, MODEL_FILES[name]), history,
            history.replace(".history.json", ".trained.json")]


def seed_models(models_dir, source_dir=None):
    """Copy the committed models into ``models_dir`` (a run folder), where the run reuses them.

    A model the run folder lacks is copied; a copy that is still untouched is refreshed when
    the committed model changed (e.g. after ``git pull``); a model trained in the run folder
    (``--retrain``) is kept. Returns the names of the models the folder holds as copies.

    Args:
        models_dir: the run folder's ``models/``.
        source_dir: the committed models (default: the repository's ``models/``).
    """
    source_dir = source_dir or os.path.join(REPO_ROOT, "models")
    if os.path.abspath(source_dir) == os.path.abspath(models_dir):
        return []
    manifest_path = os.path.join(models_dir, SEEDED_MANIFEST)
    seeded = {}
    if os.path.exists(manifest_path):
        with open(manifest_path) as handle:
            seeded = json.load(handle)
    copies = []
    for name in MODEL_FILES:
        sources, targets = model_files(name, source_dir), model_files(name, models_dir)
        if not os.path.exists(sources[0]):
            continue
        target = targets[0]
        untouched = os.path.exists(target) and seeded.get(name) == _sha256(target)
        if os.path.exists(target) and not untouched:
            continue  # trained here: the user's own model
        committed = _sha256(sources[0])
        if not untouched or seeded[name] != committed:
            for source, copy in zip(sources, targets):
                if os.path.exists(source):
                    with atomic_path(copy) as tmp:
                        shutil.copyfile(source, tmp)
                elif os.path.exists(copy):
                    os.remove(copy)
            seeded[name] = committed
        copies.append(name)
    if copies:
        with atomic_path(manifest_path) as tmp, open(tmp, "w") as handle:
            json.dump(seeded, handle, indent=1)
    return copies


def kernel_environment(parameters=None, environ=None):
    """Environment variables for the kernels of a CLI run.

    Progress bars off (``TQDM_DISABLE``) and tqdm's "IProgress not found" warning filtered
    (``PYTHONWARNINGS``): executed copies need neither; nor the warning that the archive's
    sha256 check is off, which the injected parameters (``verify_archive``) and the terminal
    already say. TensorFlow's C++ INFO lines off
    (``TF_CPP_MIN_LOG_LEVEL=1``, unless set). The package importable from the output folder,
    where the kernels run (``PYTHONPATH``). The local files a run reads (the CIFAR-100
    archive, VGG16's weights) travel as the variables the notebooks read
    (``environment.archive_settings``, ``environment.vgg16_weights``), so that no path of
    this machine is written into the injected-parameters cell.

    Args:
        parameters: the run's ``notebook_parameters`` (default None: no files).
        environ: the current environment (default ``os.environ``); it is not changed.
    """
    environ = os.environ if environ is None else environ
    variables = {
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": _joined(",", environ.get("PYTHONWARNINGS"), "ignore:IProgress not found",
                                  "ignore:sha256 check of"),
        "TF_CPP_MIN_LOG_LEVEL": environ.get("TF_CPP_MIN_LOG_LEVEL", "1"),
        "PYTHONPATH": _joined(os.pathsep, REPO_ROOT, environ.get("PYTHONPATH")),
    }
    for key, variable in (("archive", environment.ARCHIVE_VARIABLE),
                          ("vgg16_weights", environment.WEIGHTS_VARIABLE)):
        value = (parameters or {}).get(key)
        if value and value != "imagenet":
            variables[variable] = os.path.abspath(value)
    return variables


def _joined(separator, *parts):
    return separator.join(part for part in parts if part)


def kernel_parameters(parameters):
    """The parameters as the kernel sees them: it runs in the output folder, so ``output_dir``
    is "." and every path a notebook prints is relative to that folder; local files travel
    as environment variables (``kernel_environment``)."""
    passed = {**parameters, "output_dir": "."}
    passed.pop("archive", None)
    if passed.get("vgg16_weights") not in ("imagenet", None):
        passed["vgg16_weights"] = environment.WEIGHTS_FROM_VARIABLE  # the file, in every mode
    return passed


def notebook_arguments(source, parameters):
    """What a run passes to the notebook ``source``: the ones of ``parameters`` that its
    parameters cell declares, as its kernel sees them (``kernel_parameters``).
    tests/test_parameters.py checks that each notebook uses all it declares."""
    import papermill

    declared = papermill.inspect_notebook(source)
    return {key: value for key, value in kernel_parameters(parameters).items() if key in declared}


def quiet_kernel_manager(log):
    """A kernel manager class whose kernels write their stdout/stderr file descriptors to the
    open file ``log`` (see ``KERNEL_ARGUMENTS``)."""
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kwargs):
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stderr", log)
            return await super().start_kernel(**kwargs)

    return QuietKernelManager


def path_replacements(output_dir, files=()):
    """``(pattern, replacement)`` pairs that make the paths of this machine relative in the
    text of an executed copy: the output folder (where the kernel ran) and the repository
    become relative paths, the Python installation "<python>", the home folder "~", and each
    of ``files`` (the archive, VGG16's weights) its file name."""
    pairs = [(os.path.dirname(os.path.abspath(path)) + os.sep, "") for path in files if path]
    for folder in (os.path.abspath(output_dir), os.path.abspath(REPO_ROOT)):
        pairs += [(folder + os.sep, ""), (folder, ".")]
    for prefix, name in ((sys.prefix, "<python>"), (sys.base_prefix, "<python>"),
                         (os.path.expanduser("~"), "~")):
        if prefix and prefix not in ("/", "~") and not prefix.startswith(os.path.abspath(REPO_ROOT)):
            pairs.append((prefix, name))
    pairs = sorted(set(pairs), key=lambda pair: -len(pair[0]))  # the longest prefix first
    # A bare folder name counts only where the name ends (not "/repo" in "/repo2").
    return [(re.compile(re.escape(prefix) + ("" if prefix.endswith(os.sep) else r"(?![\w.-])")),
             replacement) for prefix, replacement in pairs]


def _scrub(value, replacements):
    if isinstance(value, str):
        for pattern, replacement in replacements:
            value = pattern.sub(lambda _: replacement, value)
        return value
    if isinstance(value, list):
        return [_scrub(item, replacements) for item in value]
    if isinstance(value, dict):
        return {key: _scrub(item, replacements) for key, item in value.items()}
    return value


def clean_record(notebook, name, final_path, output_dir, files=()):
    """The executed notebook as it is kept: papermill's recorded input and output paths are
    the notebook's name and its final place, relative to the output folder; the outputs and
    papermill's metadata hold no path of this machine (``path_replacements``).

    Args:
        notebook: the executed notebook (a dict, as read from JSON); changed in place.
        name: the notebook's file name.
        final_path: where the executed copy is kept.
        output_dir: the run's output folder.
        files: local files the run read (``path_replacements``).

    Returns:
        ``notebook``.
    """
    replacements = path_replacements(output_dir, files)
    record = notebook.setdefault("metadata", {}).setdefault("papermill", {})
    record["input_path"] = name
    record["output_path"] = os.path.relpath(final_path, output_dir).replace(os.sep, "/")
    record["environment_variables"] = {}
    notebook["metadata"]["papermill"] = _scrub(record, replacements)
    for cell in notebook.get("cells", []):
        if "outputs" in cell:
            cell["outputs"] = _scrub(cell["outputs"], replacements)
    return notebook


def keep_executed_copy(running, final, name, output_dir, files=()):
    """Write the cleaned executed copy atomically to ``final``, then remove ``running``."""
    with open(running) as handle:
        notebook = json.load(handle)
    clean_record(notebook, name, final, output_dir, files)
    with atomic_path(final) as tmp, open(tmp, "w") as handle:
        json.dump(notebook, handle, indent=1, ensure_ascii=False)
        handle.write("\n")
    os.remove(running)


def previous_durations(*copies):
    """Seconds each code cell took in the first of ``copies`` (executed notebooks) that
    exists, keyed by the cell's source: the estimates shown while the same cell runs again."""
    for path in copies:
        if os.path.exists(path):
            try:
                with open(path) as handle:
                    cells = json.load(handle)["cells"]
            except (OSError, ValueError, KeyError):
                continue
            return {"".join(cell["source"]): cell["metadata"]["papermill"]["duration"]
                    for cell in cells if cell.get("cell_type") == "code"
                    and (cell.get("metadata", {}).get("papermill") or {}).get("duration")}
    return {}


def run_notebooks(names, parameters, output_dir, out=None, err=None):
    """Execute ``names`` in order into ``output_dir``; 0 when all ran, 1 at the first failure.

    Each notebook runs into ``failed_folder(output_dir)`` and replaces its copy in
    ``<output_dir>/executed`` only when it ran to the end. Progress goes to ``out``, failures
    to ``err`` (default: standard output and error).
    """
    import papermill

    out, err = out or sys.stdout, err or sys.stderr
    os.environ.update(kernel_environment(parameters))  # for the kernels papermill starts
    executed_dir = os.path.join(output_dir, "executed")
    unfinished_dir = failed_folder(output_dir)
    logs_dir = os.path.join(output_dir, "logs")
    os.makedirs(executed_dir, exist_ok=True)
    os.makedirs(logs_dir, exist_ok=True)
    timings = []
    # Estimates come from this folder's previous run, else (a CIFAR-100 run) the committed record.
    real = parameters.get("data_source") == "cifar100" and not parameters.get("quick")
    for number, name in enumerate(names, 1):
        recorded = [os.path.join(REPO_ROOT, "executed", name)] if real else []
        source = os.path.join(REPO_ROOT, name)
        running = os.path.join(unfinished_dir, name)
        final = os.path.join(executed_dir, name)
        kernel_log = os.path.join(logs_dir, f"kernel_{os.path.splitext(name)[0]}.log")
        kept = f"{final} was left as it was." if os.path.exists(final) else ""
        earlier = "previous run" if os.path.exists(final) else "reference run"
        reporter = progress.Progress(name, number, len(names), out=out,
                                     estimates=previous_durations(final, *recorded), earlier=earlier)
        os.makedirs(unfinished_dir, exist_ok=True)
        try:
            with open(kernel_log, "w") as log:
                papermill.execute_notebook(
                    source, running, parameters=notebook_arguments(source, parameters),
                    cwd=output_dir, kernel_name="python3", extra_arguments=KERNEL_ARGUMENTS,
                    progress_bar=False, **progress.engine_arguments(reporter),
                    kernel_manager_class=quiet_kernel_manager(log))
        except papermill.PapermillExecutionError as error:
            reporter.stop()
            print(f"\n{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                  f"The failed copy with the full traceback: {running}\n"
                  f"The kernel's log: {kernel_log}\n{kept}", file=err)
            return 1
        except BaseException:  # interrupted (Ctrl-C), kernel died, papermill's own errors
            reporter.stop()
            print(f"\n{name} did not finish; its partial copy: {running}\n"
                  f"The kernel's log: {kernel_log}\n{kept}", file=err)
            raise
        # Only a notebook that ran to the end replaces the previous executed copy, atomically.
        files = [parameters.get("archive"), parameters.get("vgg16_weights")]
        keep_executed_copy(running, final, name, output_dir,
                           [path for path in files if path and os.path.isfile(path)])
        _remove_if_empty(unfinished_dir)
        timings.append((name, reporter.stop()))
    summary = ", ".join(f"{name} {progress.duration(seconds)}" for name, seconds in timings)
    print(f"\nDone: {summary}.", file=out)
    return 0


def _remove_if_empty(folder):
    try:
        os.removedirs(folder)  # and its parents while they are empty (runs/ of a --record run)
    except OSError:
        pass
