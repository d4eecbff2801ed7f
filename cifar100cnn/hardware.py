"""Devices, precision, distribution and seeds, on whichever Keras backend runs.

Nothing here imports TensorFlow unless Keras runs on it: its devices, determinism and
``tf.distribute`` strategies live in ``tf_runtime``.
"""

import contextlib
import dataclasses
import os

import keras

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# CPU flags (Linux /proc/cpuinfo) under which oneDNN runs bfloat16 convolutions natively:
# Intel AMX tiles or AVX-512 BF16 (Intel Cooper Lake+, AMD Zen 4+).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
TF_ONLY = ("MirroredStrategy (several GPUs in one machine), MultiWorkerMirroredStrategy and "
           "keras-tuner's distributed mode are TensorFlow features")


def backend():
    """The Keras backend this process runs on: "tensorflow", "jax", "torch" or "numpy"."""
    return keras.config.backend()


def tf_runtime():
    """The TensorFlow-only helpers; a ``RuntimeError`` saying what to do on another backend."""
    if backend() != "tensorflow":
        raise RuntimeError(f"{TF_ONLY}; Keras runs on {backend()} here "
                           "(set KERAS_BACKEND=tensorflow with TensorFlow installed).")
    from . import tf_runtime as runtime  # imports TensorFlow: only on its backend

    return runtime


def gpu_names():
    """The names of the GPUs the backend sees (an empty list on a CPU-only machine)."""
    name = backend()
    if name == "tensorflow":
        return tf_runtime().gpu_names()
    if name == "jax":
        import jax

        return [device.device_kind for device in jax.devices() if device.platform == "gpu"]
    if name == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def set_seed(seed=0):
    """Seed Python, NumPy and the backend; under TensorFlow, deterministic CPU kernels.

    Args:
        seed: the seed (default 0).
    """
    keras.utils.set_random_seed(seed)
    if backend() == "tensorflow" and not gpu_names():
        tf_runtime().enable_determinism()


def out_of_memory(error):
    """Whether ``error`` is a device running out of memory, on any backend: TensorFlow's
    ``ResourceExhaustedError``, PyTorch's ``OutOfMemoryError`` (CUDA or other devices), or a
    runtime error of XLA (JAX) whose status is ``RESOURCE_EXHAUSTED``."""
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ResourceExhaustedError", "OutOfMemoryError"}:
        return True
    return isinstance(error, RuntimeError) and "RESOURCE_EXHAUSTED" in str(error)


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags.

    Args:
        path: the file to read them from (default ``"/proc/cpuinfo"``).

    Returns:
        A set of flag names; empty where the file does not exist (e.g. macOS, Windows).
    """
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_precision(gpus, flags, backend_name="tensorflow"):
    """The precision "auto" stands for.

    Args:
        gpus: the GPUs present (a list; empty for none).
        flags: the CPU's feature flags (``cpu_flags()``).
        backend_name: the Keras backend (default "tensorflow").

    Returns:
        On GPUs "mixed_float16" (under JAX "mixed_bfloat16": same tensor-core speed on the
        GPUs JAX supports, and no loss scaling). On CPUs, under TensorFlow, "mixed_bfloat16"
        with native bf16 (oneDNN: 1.4x-2x faster there, docs/BENCHMARKS.md); "float32"
        elsewhere (XLA's CPU convolutions gain nothing from bf16).
    """
    if gpus:
        return "mixed_bfloat16" if backend_name == "jax" else "mixed_float16"
    if backend_name == "tensorflow" and flags & set(BF16_CPU_FLAGS):
        return "mixed_bfloat16"
    return "float32"


def resolve_precision(precision="auto"):
    """``precision`` checked, "auto" replaced by what it stands for here.

    Args:
        precision: one of ``PRECISIONS`` (default "auto": see ``auto_precision``).

    Returns:
        A Keras dtype policy name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return auto_precision(gpu_names(), cpu_flags(), backend())
    return precision


@contextlib.contextmanager
def precision_policy(name):
    """Keras' dtype policy is ``name`` inside the block (models built there compute in it)
    and what it was after it.

    Args:
        name: a Keras dtype policy name, e.g. "float32".
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


class OneDevice:
    """Training on the backend's default device: ``scope()`` changes nothing."""

    num_replicas_in_sync = 1

    def scope(self):
        return contextlib.nullcontext()


def replicas(strategy):
    """How many copies of the model train in step under ``strategy``.

    Args:
        strategy: a ``tf.distribute.Strategy``, a ``keras.distribution.Distribution`` or
            ``OneDevice``.
    """
    if hasattr(strategy, "num_replicas_in_sync"):
        return strategy.num_replicas_in_sync
    return int(strategy.device_mesh.devices.size)


def current_strategy():
    """The distribution in force: TensorFlow's current strategy, else Keras' distribution
    (``keras.distribution.set_distribution``), else ``OneDevice()``."""
    if backend() == "tensorflow":
        return tf_runtime().current_strategy()
    return keras.distribution.distribution() or OneDevice()


def pick_strategy(cpu_devices=1):
    """The distribution for this machine's devices.

    Args:
        cpu_devices: > 1 on a machine without GPUs splits the CPU into that many logical
            devices and mirrors over them (TensorFlow only: a test of multi-device training
            on a CPU; call it before TensorFlow has run anything). Default 1.

    Returns:
        Several GPUs: ``MirroredStrategy`` under TensorFlow, ``keras.distribution.DataParallel``
        under JAX; else the current strategy (one device).
    """
    name, gpus = backend(), gpu_names()
    if name == "tensorflow":
        return tf_runtime().mirrored_strategy(len(gpus), cpu_devices)
    if cpu_devices > 1 and not gpus:
        raise RuntimeError(f"{TF_ONLY}; several logical CPU devices need TensorFlow "
                           f"(Keras runs on {name} here).")
    if name == "jax" and len(gpus) > 1:
        return keras.distribution.DataParallel(devices=keras.distribution.list_devices("gpu"))
    if name == "torch" and len(gpus) > 1:
        print(f"Training on one of {len(gpus)} GPUs: several GPUs need TensorFlow "
              "(MirroredStrategy) or JAX (DataParallel).")
    return current_strategy()


def versions():
    """The backend's and Keras' versions, e.g. "JAX 0.10.2, Keras 3.15.1"."""
    name = backend()
    if name == "tensorflow":
        label, version = "TensorFlow", tf_runtime().version()
    elif name in ("jax", "torch"):
        module = __import__(name)
        label, version = {"jax": "JAX", "torch": "PyTorch"}[name], module.__version__
    else:
        label, version = name, ""
    return f"{label} {version}".strip() + f", Keras {keras.__version__}"


@dataclasses.dataclass(frozen=True)
class Hardware:
    """The devices training runs on: the distribution, the precision and a line about both."""

    strategy: object  # a tf.distribute.Strategy, a keras.distribution.Distribution or OneDevice
    precision: str  # a Keras dtype policy name
    description: str


def set_up_hardware(precision="auto", cpu_devices=1):
    """Describe the devices, settle the precision and pick a distribution.

    Args:
        precision: "auto" (default: see ``auto_precision``), "float32", "mixed_float16" or
            "mixed_bfloat16". Saved models are float32 whatever the training precision.
        cpu_devices: see ``pick_strategy`` (default 1).

    Returns:
        A ``Hardware``.
    """
    precision = resolve_precision(precision)
    strategy = pick_strategy(cpu_devices)
    gpus = gpu_names()
    if gpus:
        where = f"{len(gpus)} GPU(s): {', '.join(gpus)}"
    else:
        bf16 = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
        where = f"CPU only ({os.cpu_count()} cores{'; ' + ', '.join(bf16) if bf16 else ''})"
    text = (f"{versions()}; {where}; precision {precision}; "
            f"strategy {type(strategy).__name__} with {replicas(strategy)} replica(s)")
    return Hardware(strategy, precision, text)


def configure_hardware(precision="auto", cpu_devices=1):
    """``set_up_hardware`` as a pair.

    Returns:
        ``(strategy, description)``; the precision is in the description (and in
        ``set_up_hardware(...).precision``).
    """
    hardware = set_up_hardware(precision, cpu_devices)
    return hardware.strategy, hardware.description
