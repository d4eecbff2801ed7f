"""Devices, precision policy, distribution strategy and seeds."""

import contextlib
import os

import keras
import tensorflow as tf

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# CPU flags (Linux /proc/cpuinfo) under which oneDNN runs bfloat16 convolutions natively:
# Intel AMX tiles or AVX-512 BF16 (Intel Cooper Lake+, AMD Zen 4+).
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def set_seed(seed=0):
    """Seed Python, NumPy and TensorFlow; make CPU kernels deterministic.

    Args:
        seed: the seed (default 0).
    """
    keras.utils.set_random_seed(seed)
    if not tf.config.list_physical_devices("GPU"):
        tf.config.experimental.enable_op_determinism()


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


def auto_precision(gpus, flags):
    """The precision "auto" stands for.

    Args:
        gpus: the GPUs present (a list; empty for none).
        flags: the CPU's feature flags (``cpu_flags()``).

    Returns:
        "mixed_float16" on GPUs; "mixed_bfloat16" on CPUs with native bf16 (measured 1.4x-2x
        faster there, docs/BENCHMARKS.md); "float32" elsewhere.
    """
    if gpus:
        return "mixed_float16"
    return "mixed_bfloat16" if flags & set(BF16_CPU_FLAGS) else "float32"


def set_precision(precision="auto"):
    """Set the global dtype policy.

    Args:
        precision: one of ``PRECISIONS`` (default "auto": see ``auto_precision``).

    Returns:
        The policy's name.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        precision = auto_precision(tf.config.list_physical_devices("GPU"), cpu_flags())
    keras.mixed_precision.set_global_policy(precision)
    return precision


@contextlib.contextmanager
def precision_policy(name):
    """The global dtype policy is ``name`` inside the block and what it was after it.

    Args:
        name: a Keras dtype policy name, e.g. "float32".
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def configure_hardware(precision="auto", cpu_devices=1):
    """Describe the devices, set the precision policy and pick a distribution strategy.

    Args:
        precision: "auto" (default: see ``auto_precision``), "float32", "mixed_float16" or
            "mixed_bfloat16". Saved models are float32 whatever the training precision.
        cpu_devices: > 1 on a machine without GPUs splits the CPU into that many logical
            devices and mirrors over them (to test multi-device training on a CPU); it must
            be called before TensorFlow has run anything. Default 1.

    Returns:
        ``(strategy, description)``. Several GPUs -> ``MirroredStrategy``.
    """
    set_precision(precision)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and cpu_devices > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
    if len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    elif not gpus and cpu_devices > 1:
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.get_strategy()
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        where = f"{len(gpus)} GPU(s): {', '.join(names)}"
    else:
        bf16 = sorted(cpu_flags() & set(BF16_CPU_FLAGS))
        where = f"CPU only ({os.cpu_count()} cores{'; ' + ', '.join(bf16) if bf16 else ''})"
    text = (f"TensorFlow {tf.__version__}, Keras {keras.__version__}; {where}; "
            f"precision {keras.mixed_precision.global_policy().name}; "
            f"strategy {type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)")
    return strategy, text
