"""Model files that open in every Keras 3 release from ``OLDEST_KERAS`` on, on any backend.

A ``.keras`` file is a zip archive whose ``config.json`` holds the model's configuration as
nested ``{"class_name": ..., "config": {...}}`` objects. Each Keras release writes every
constructor argument it knows, and an older release refuses an argument it does not know
("could not be deserialized properly") or, worse, ignores it. So a file written by the newest
Keras opens in an older one only if it leaves out what the older one lacks.

``NEWER_KEYS`` lists the constructor arguments that built-in classes gained after
``OLDEST_KERAS``, with the values that leave the feature off and the first release that has it;
``NEWER_CLASSES`` and ``NEWER_ACTIVATIONS`` list the classes and activation names added since.
``portable_config`` drops the arguments that hold a feature-off value (the older release builds
the same layer without them) and refuses a configuration that really uses a newer feature, so
that no file is written that an older Keras would refuse or misread. ``required_keras`` tells,
for a file that will not load, which release it needs.

The tables were found by comparing the constructor signatures of every class in
``keras.layers``, ``keras.initializers``, ``keras.regularizers``, ``keras.constraints`` and
``keras.dtype_policies`` and the names in ``keras.activations`` across the releases 3.8 to 3.15
(docs/portability.md: how, and the verified matrix). Extend them when a new release adds one.
"""

import json
import zipfile

from .environment import parse_version

OLDEST_KERAS = "3.8"

_VARIANCE_SCALING = ("VarianceScaling", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform",
                     "LecunNormal", "LecunUniform")
_LORA = {"lora_alpha": ((None,), "3.10")}
_QUANTIZATION = {"quantization_config": ((None,), "3.13")}
_ATTENTION = {"use_gate": ((False,), "3.14"), "sliding_window": ((None,), "3.15")}
_LOOKUP = {"oov_method": (("floormod",), "3.14"), "salt": ((None,), "3.14")}

# {class name: {argument: (values that leave the feature off, first Keras release with it)}}
NEWER_KEYS = {
    **{name: {"input_axes": ((None,), "3.15"), "output_axes": ((None,), "3.15")}
       for name in _VARIANCE_SCALING},
    # Keras 3.8 takes `ragged` without complaint and ignores it.
    "InputLayer": {"ragged": ((None, False), "3.9")},
    "Resizing": {"antialias": ((False,), "3.9")},
    "Conv1D": _LORA, "Conv2D": _LORA, "Conv3D": _LORA,
    "Dense": {**_LORA, **_QUANTIZATION},
    "Embedding": {**_LORA, **_QUANTIZATION},
    "EinsumDense": {**_LORA, **_QUANTIZATION, "gptq_unpacked_column_size": ((None,), "3.12")},
    "BatchNormalization": {"renorm": ((False,), "3.14"), "renorm_clipping": ((None, {}), "3.14"),
                           "renorm_momentum": ((0.99,), "3.14")},
    "MultiHeadAttention": _ATTENTION, "GroupQueryAttention": _ATTENTION,
    "IntegerLookup": _LOOKUP, "StringLookup": _LOOKUP,
    "TorchModuleWrapper": {"output_shape": ((None,), "3.10")},
    "JaxLayer": {"native_serialization_platforms": ((None,), "3.14")},
    "FlaxLayer": {"native_serialization_platforms": ((None,), "3.14")},
}
# {class name: first Keras release with it}
NEWER_CLASSES = {
    "AugMix": "3.9", "CutMix": "3.9", "RMSNormalization": "3.9", "RandomErasing": "3.9",
    "RandomGaussianBlur": "3.9", "RandomInvert": "3.9", "RandomPerspective": "3.9",
    "RandomElasticTransform": "3.10", "ReversibleEmbedding": "3.12", "GPTQDTypePolicy": "3.12",
    **{f"Adaptive{kind}Pooling{rank}D": "3.13" for kind in ("Average", "Max") for rank in (1, 2, 3)},
    "ContrastLimitedAdaptiveHistogramEqualization": "3.14", "AWQDTypePolicy": "3.14",
    "Int4DTypePolicy": "3.14",
}
# {activation name: first Keras release with it}
NEWER_ACTIVATIONS = {"sparse_sigmoid": "3.10"}


class PortabilityError(ValueError):
    """A model configuration uses a feature that Keras releases before some version lack."""

    def __init__(self, message, version):
        super().__init__(message)
        self.version = version  # the first Keras release with every feature used (None: none)


def _newer(version, target):
    return parse_version(version) > parse_version(target)


def _objects(node):
    """Every ``{"class_name": ..., "config": {...}}`` object in a configuration, depth first."""
    stack = [node]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and isinstance(node.get("config"), dict):
                yield node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _is_builtin(node):
    """A Keras class (not one of a package or a user: those are never in the tables)."""
    module = node.get("module")  # a registered class of a package or a user: its own module
    return module is None or module.split(".")[0] == "keras"


def newer_features(config, target=OLDEST_KERAS):
    """What a configuration uses that Keras ``target`` lacks.

    Args:
        config: a model configuration (``config.json`` of a ``.keras`` file), not changed.
        target: the Keras release to compare with (default ``OLDEST_KERAS``).

    Returns:
        ``(droppable, used)``: a list of ``(object, key, version)`` for the newer arguments
        that hold a feature-off value, and one of ``(description, version)`` for the newer
        features really used (e.g. ``("BatchNormalization(renorm=True)", "3.14")``).
    """
    droppable, used = [], []
    for node in _objects(config):
        if not _is_builtin(node):
            continue
        name, settings = node["class_name"], node["config"]
        version = NEWER_CLASSES.get(name)
        if version and _newer(version, target):
            used.append((f"the {name} class", version))
        for key, (neutral, version) in NEWER_KEYS.get(name, {}).items():
            if key not in settings or not _newer(version, target):
                continue
            if settings[key] in neutral and type(settings[key]) in {type(v) for v in neutral}:
                droppable.append((node, key, version))
            else:
                used.append((f"{name}({key}={settings[key]!r})", version))
        activation = settings.get("activation")
        version = NEWER_ACTIVATIONS.get(activation) if isinstance(activation, str) else None
        if version and _newer(version, target):
            used.append((f"activation={activation!r}", version))
    return droppable, used


def custom_classes(config):
    """The sorted names of the classes in a configuration that are not Keras' own."""
    return sorted({node["class_name"] for node in _objects(config) if not _is_builtin(node)})


def _version_of(used):
    return max((version for _, version in used), key=parse_version)


def portable_config(config, target=OLDEST_KERAS):
    """The configuration with the newer arguments that change nothing left out, so that Keras
    ``target`` and every later release read it as the newest does.

    Args:
        config: a model configuration; not changed (a changed copy is returned).
        target: the oldest Keras release the result must open in (default ``OLDEST_KERAS``).

    Returns:
        ``(config, changes)``: the portable configuration and the number of arguments left out
        (and of a model's single input or output no longer written as a one-element list).

    Raises:
        PortabilityError: the model really uses a feature ``target`` lacks; the message names
            each and the first Keras release that has them all.
    """
    config = json.loads(json.dumps(config))  # a deep copy
    custom = custom_classes(config)
    if custom:
        raise PortabilityError(
            f"the model uses classes of its own ({', '.join(custom)}), which Keras cannot "
            "rebuild without the code that defines them", None)
    droppable, used = newer_features(config, target)
    if used:
        version = _version_of(used)
        raise PortabilityError(
            f"the model uses {', '.join(sorted({what for what, _ in used}))}, which Keras "
            f"releases before {version} lack", version)
    for node, key, _ in droppable:
        del node["config"][key]
    return config, len(droppable) + _unlist_single_input_output(config)


def _unlist_single_input_output(config):
    """Write a model's only input and output as such, not as one-element lists: Keras 3.10 to
    3.14 write ``[["image", 0, 0]]`` even for a model built on one tensor, and every release
    then rebuilds it with a list input, which warns "The structure of `inputs` doesn't match"
    at each call on a plain array. (3.15 writes ``["image", 0, 0]``, which 3.8 reads too.)
    Returns the number of changes."""
    settings, changes = config.get("config"), 0
    if config.get("class_name") != "Functional" or not isinstance(settings, dict):
        return 0
    for key in ("input_layers", "output_layers"):
        value = settings.get(key)
        if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], list)
                and len(value[0]) == 3 and isinstance(value[0][0], str)):
            settings[key], changes = value[0], changes + 1
    return changes


def read_config(path):
    """The configuration of a ``.keras`` file, or None when it is not a readable ``.keras``."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None


def saved_by(path):
    """The Keras version that wrote a ``.keras`` file (its ``metadata.json``), or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            version = json.loads(archive.read("metadata.json")).get("keras_version")
        parse_version(version)
        return str(version)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, AttributeError):
        return None


def rewrite_config(path, config):
    """Replace the ``config.json`` of the ``.keras`` file ``path`` in place (every other member,
    the weights among them, is copied unchanged). Meant for a temporary file: the caller
    renames it into place."""
    with zipfile.ZipFile(path) as source:
        members = [(info, source.read(info.filename)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for info, data in members:
            if info.filename == "config.json":
                data = json.dumps(config).encode()
            target.writestr(info, data)


def make_portable(path, target=OLDEST_KERAS):
    """Rewrite a ``.keras`` file so that Keras ``target`` and later read it (``portable_config``).

    Returns the number of changes; raises ``PortabilityError`` as ``portable_config`` does,
    leaving the file unchanged.
    """
    config = read_config(path)
    if config is None:
        raise ValueError(f"{path} is not a .keras file")
    portable, changes = portable_config(config, target)
    if changes:
        rewrite_config(path, portable)
    return changes


def required_keras(path, installed):
    """Why Keras ``installed`` may fail to read a ``.keras`` file: ``(version, what)``, the
    first Keras release that reads it and what it uses from there, or ``(None, None)`` when
    nothing in the file is known to be newer than ``installed``.

    Newer features in real use (``newer_features``) are named; newer arguments at their
    feature-off values are not (``artifacts.load_model`` leaves them out and reads the file);
    otherwise a file written by a release newer than ``installed`` names that release (its
    newer feature is unknown here).
    """
    config = read_config(path)
    if config is not None:
        used = newer_features(config, installed)[1]  # the rest is left out on reading
        if used:
            return _version_of(used), ", ".join(sorted({what for what, _ in used}))
    writer = saved_by(path)
    if writer and _newer(writer, installed):
        return writer, f"a configuration written by Keras {writer}"
    return None, None
