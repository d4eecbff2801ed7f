"""Two halves of the CI check that the model files open in the oldest supported Keras.

``python .ci/portability.py save FOLDER`` (main environment, this package, Keras on TensorFlow):
copies the committed models into FOLDER, saves there every model the package builds (random
weights, through ``artifacts.save_model``) and one that really uses a newer Keras feature
(saved with ``portable=False``), and writes each model's predictions on a few synthetic images.

``python .ci/portability.py check FOLDER`` (a small environment with the oldest Keras on JAX,
no TensorFlow): loads every file with plain ``keras.models.load_model`` in safe mode, without
this package, and compares its predictions (max abs difference <= 1e-4); then checks that
``artifacts.load_model`` names the Keras release the newer-feature file needs, in one line.
"""

import glob
import inspect
import os
import shutil
import sys

import numpy as np

TOLERANCE = 1e-4
TOO_NEW = "newer_feature.keras"


def synthetic_images(count=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3)).astype("float32")


def builders():
    """Every model the package builds: each ``models.build_*`` that needs no argument, and
    VGG16 (random weights) at an input size that upscales (its Resizing layer)."""
    from cifar100cnn import models, transfer

    found = {name[len("build_"):]: function for name, function in vars(models).items()
             if name.startswith("build_") and inspect.isfunction(function)
             and all(p.default is not p.empty for p in inspect.signature(function).parameters.values())}
    found["vgg16_64"] = lambda: transfer.build_vgg16(weights=None, input_size=64)
    return found


def save(folder):
    import keras

    from cifar100cnn import artifacts

    os.makedirs(folder, exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for path in sorted(glob.glob(os.path.join(root, "models", "*.keras"))):
        shutil.copyfile(path, os.path.join(folder, "committed_" + os.path.basename(path)))
    keras.utils.set_random_seed(0)
    for name, build in builders().items():
        artifacts.save_model(build(), os.path.join(folder, f"built_{name}.keras"))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.BatchNormalization(renorm=True)(keras.layers.Conv2D(4, 3)(inputs))
    x = keras.layers.Dense(100, activation="softmax")(keras.layers.GlobalMaxPooling2D()(x))
    artifacts.save_model(keras.Model(inputs, x), os.path.join(folder, TOO_NEW), portable=False)
    x = synthetic_images()
    expected = {os.path.basename(path): np.asarray(artifacts.load_model(path)(x, training=False))
                for path in sorted(glob.glob(os.path.join(folder, "*.keras")))
                if not path.endswith(TOO_NEW)}
    np.savez(os.path.join(folder, "expected.npz"), **expected)
    print(f"keras {keras.__version__} ({keras.backend.backend()}): {len(expected)} models "
          f"saved with their predictions in {folder}")


def check(folder):
    import keras

    expected = np.load(os.path.join(folder, "expected.npz"))
    x, failures = synthetic_images(), []
    for name in sorted(expected.files):
        try:
            model = keras.models.load_model(os.path.join(folder, name), compile=False,
                                            safe_mode=True)
            found = keras.ops.convert_to_numpy(model(x, training=False))
            difference = float(np.abs(found - expected[name]).max())
        except Exception as error:  # report every file, then fail
            failures.append(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
            continue
        status = "ok" if difference <= TOLERANCE else "DIFFERENT"
        print(f"  {name}: loads, max |difference| {difference:.1e} {status}")
        if difference > TOLERANCE:
            failures.append(f"{name}: predictions differ by {difference:.1e}")

    # The package's own loader on a file that needs a newer Keras: one line naming it.
    os.environ["CIFAR100CNN_SKIP_VERSION_CHECK"] = "1"  # the package's floor is above this Keras
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from cifar100cnn import artifacts
    try:
        artifacts.load_model(os.path.join(folder, TOO_NEW))
        failures.append(f"{TOO_NEW} loaded, but this Keras lacks BatchNormalization(renorm=...)")
    except artifacts.ArtifactError as error:
        message = str(error)
        print(f"  {TOO_NEW}: {message}")
        if "needs Keras 3.14 or newer" not in message or "\n" in message or len(message) > 400:
            failures.append(f"{TOO_NEW}: not the one-line message naming Keras 3.14")

    print(f"keras {keras.__version__} ({keras.backend.backend()}): {len(expected.files)} models "
          f"compared, {len(failures)} failures")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    command, folder = sys.argv[1:3]
    if command == "save":
        save(folder)
    else:
        sys.exit(check(folder))
