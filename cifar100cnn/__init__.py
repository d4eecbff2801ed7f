"""CIFAR-100 classification with Keras 3: data, models, training, evaluation, visualization.

Modules: ``data`` (loading, split, synthetic data, tf.data), ``hardware`` (devices,
precision, seeds), ``models`` (the four models and their recipes), ``augment``
(``RandomAffine`` and its presets), ``transfer`` (VGG16), ``optimization``, ``training`` (fit
with checkpoints/resume), ``inference``, ``tuning`` (keras-tuner search), ``artifacts``
(atomic saves, safe loads), ``evaluation`` and ``visualization``.
"""

__version__ = "0.1.0"

# Stop at import, with the command that fixes it, when Keras, NumPy or the backend's package
# (TensorFlow only when it is the backend) is missing or older than the package needs (e.g. an
# older Keras preinstalled on Colab); see environment.py.
from .environment import check_versions as _check_versions  # noqa: E402
from .environment import prefer_onednn as _prefer_onednn  # noqa: E402

_check_versions()
# TensorFlow's fast CPU kernels on every x86-64 CPU, not only the newest (set before TensorFlow
# is imported; a TF_ENABLE_ONEDNN_OPTS of the user's wins).
_prefer_onednn()
