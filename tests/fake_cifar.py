"""Tiny fake CIFAR-100 archives in the exact format of the official ``cifar-100-python.tar.gz``.

The real archive is a gzip'd tar holding ``cifar-100-python/{train,test,meta}``; ``train``
and ``test`` are pickled dicts with bytes keys ``b'data'`` (uint8, N x 3072, each row
channel-major: 1024 red, 1024 green, 1024 blue values of a 32x32 image), ``b'fine_labels'``,
``b'coarse_labels'``, ``b'filenames'`` and ``b'batch_label'``; ``meta`` holds
``b'fine_label_names'`` and ``b'coarse_label_names'``.

The official members are Python 2 pickles (protocol 2, written by cPickle with NumPy 1.x):
bytes are Python 2 ``str`` (BINSTRING opcodes) and the image array is rebuilt by the global
``numpy.core.multiarray._reconstruct``. ``layout="python2"`` (the default) writes exactly that
layout; ``layout="python3"`` writes what today's Python and NumPy write (protocol 4, the global
``numpy._core.multiarray._reconstruct``), as in a re-pickled copy of the dataset.

Good archive::

    arrays = write_fake_archive(tmp_path / "cifar-100-python.tar.gz", n_train=50, n_test=20)
    arrays["x_train"]   # (50, 32, 32, 3) uint8, what the loader must return

Broken variants (each returns the path it wrote): ``write_truncated_archive``,
``write_traversal_archive``, ``write_absolute_path_archive``, ``write_symlink_archive``,
``write_wrong_shape_archive``, ``write_bad_labels_archive``, ``write_missing_member_archive``,
``write_code_execution_archive`` and ``write_not_a_tar``.

Only the standard library and numpy are used, so this module can be imported from any test.
"""

import io
import os
import pickle
import struct
import tarfile

import numpy as np

FOLDER = "cifar-100-python"
FINE_NAMES = [f"fine{i:02d}" for i in range(100)]
COARSE_NAMES = [f"coarse{i:02d}" for i in range(20)]


# ---------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------

class _Global:
    """Stands for a global (function or class) named ``module.name``; pickled as the GLOBAL
    opcode ``c<module>\\n<name>\\n``, whatever today's object of that name is called."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function is callable
        raise TypeError("a stand-in, never called")


class _Python2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle with NumPy 1.x wrote the official CIFAR-100 batches:

    * ``bytes`` as Python 2 ``str`` (BINSTRING opcodes). (Python 3's protocol 2 would instead
      wrap every bytes object in a call to ``_codecs.encode``, which the real archive never
      contains.)
    * uint8 arrays as ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` with the
      state ``(1, shape, dtype, False, raw bytes)``, the dtype as ``numpy.dtype('u1', 0, 1)``
      with the state ``(3, '|', None, None, None, -1, -1, 0)``: NumPy 2 would name
      ``numpy._core.multiarray`` instead.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_named_global(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[bytes] = save_python2_str
    dispatch[_Global] = save_named_global

    def reducer_override(self, obj):
        if isinstance(obj, np.ndarray):
            if obj.dtype != np.uint8:
                raise TypeError(f"only uint8 arrays are written in the official layout, not {obj.dtype}")
            return (_Global("numpy.core.multiarray", "_reconstruct"),
                    (_Global("numpy", "ndarray"), (0,), b"b"),
                    (1, tuple(int(n) for n in obj.shape), obj.dtype, False,
                     np.ascontiguousarray(obj).tobytes()))
        if isinstance(obj, np.dtype):
            return (_Global("numpy", "dtype"), (b"u1", 0, 1),
                    (3, b"|", None, None, None, -1, -1, 0))
        return NotImplemented


def dumps_like_python2(obj):
    """``obj`` pickled with protocol 2 the way Python 2 wrote the official CIFAR-100 batches."""
    buffer = io.BytesIO()
    _Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


LAYOUTS = {
    "python2": dumps_like_python2,                                 # the official archive
    "python3": lambda obj: pickle.dumps(obj, protocol=4),         # a re-pickled copy
}


def make_arrays(n_train=50, n_test=20, seed=0):
    """Random uint8 images (N, 32, 32, 3) and fine/coarse labels for both splits."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n).astype(np.int64)
        arrays[f"x_{split}"] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        arrays[f"{split}_fine_labels"] = fine
        arrays[f"{split}_coarse_labels"] = (fine // 5).astype(np.int64)
    return arrays


def to_rows(images):
    """(N, 32, 32, 3) -> (N, 3072) channel-major rows, as stored in the archive."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)


def batch_dict(images, fine, coarse, split="train"):
    """The dict pickled as ``cifar-100-python/<split>``."""
    return {
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))],
        b"batch_label": f"{split}ing batch 1 of 1".encode(),
        b"fine_labels": [int(v) for v in fine],
        b"coarse_labels": [int(v) for v in coarse],
        b"data": to_rows(images),
    }


def meta_dict():
    return {b"fine_label_names": [n.encode() for n in FINE_NAMES],
            b"coarse_label_names": [n.encode() for n in COARSE_NAMES]}


def archive_members(arrays, layout="python2"):
    """{member name: bytes} for a well-formed archive of ``arrays``, pickled in ``layout``
    ("python2": as the official archive; "python3": as today's Python and NumPy write)."""
    dumps = LAYOUTS[layout]
    members = {}
    for split in ("train", "test"):
        batch = batch_dict(arrays[f"x_{split}"], arrays[f"{split}_fine_labels"],
                           arrays[f"{split}_coarse_labels"], split)
        members[f"{FOLDER}/{split}"] = dumps(batch)
    members[f"{FOLDER}/meta"] = dumps(meta_dict())
    return members


def write_tar(path, members, extra=()):
    """Write a tar.gz with a folder entry, ``members`` ({name: bytes}) as files and ``extra``
    (already-built ``(TarInfo, bytes or None)`` pairs, for unusual entries)."""
    path = os.fspath(path)
    with tarfile.open(path, "w:gz") as tar:
        folder = tarfile.TarInfo(FOLDER)
        folder.type = tarfile.DIRTYPE
        folder.mode = 0o755
        tar.addfile(folder)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
        for info, payload in extra:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


# ---------------------------------------------------------------------------
# A good archive
# ---------------------------------------------------------------------------

def write_fake_archive(path, n_train=50, n_test=20, seed=0, layout="python2"):
    """Write a valid CIFAR-100-format archive; return the arrays it holds
    (``x_train``, ``x_test`` uint8 (N, 32, 32, 3); ``{train,test}_{fine,coarse}_labels`` int64).

    ``layout`` "python2" pickles as the official archive, "python3" as today's Python/NumPy.
    Its sha256 is of course not the official one: read it with ``verify=False``.
    """
    arrays = make_arrays(n_train, n_test, seed)
    write_tar(path, archive_members(arrays, layout))
    return arrays


# ---------------------------------------------------------------------------
# Broken variants
# ---------------------------------------------------------------------------

def write_truncated_archive(path, n_train=50, n_test=20, seed=0, keep=0.5):
    """A valid archive cut to ``keep`` of its bytes (an interrupted download)."""
    write_fake_archive(path, n_train, n_test, seed)
    with open(path, "rb") as handle:
        payload = handle.read()
    with open(path, "wb") as handle:
        handle.write(payload[:int(len(payload) * keep)])
    return os.fspath(path)


def _file_info(name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    return info, payload


def write_traversal_archive(path, target="../escaped.txt", n_train=10, n_test=5, seed=0):
    """A valid archive plus a member whose name climbs out of the extraction folder."""
    members = archive_members(make_arrays(n_train, n_test, seed))
    return write_tar(path, members, extra=[_file_info(target, b"written outside the cache\n")])


def write_absolute_path_archive(path, target, n_train=10, n_test=5, seed=0):
    """A valid archive plus a member with an absolute path ``target``."""
    target = os.fspath(target)
    if not os.path.isabs(target):
        raise ValueError(f"target must be an absolute path, got {target!r}")
    members = archive_members(make_arrays(n_train, n_test, seed))
    return write_tar(path, members, extra=[_file_info(target, b"written at an absolute path\n")])


def write_symlink_archive(path, link_target="/etc/passwd", n_train=10, n_test=5, seed=0):
    """A valid archive plus a symbolic-link member ``cifar-100-python/link``."""
    info = tarfile.TarInfo(f"{FOLDER}/link")
    info.type = tarfile.SYMTYPE
    info.linkname = link_target
    members = archive_members(make_arrays(n_train, n_test, seed))
    return write_tar(path, members, extra=[(info, None)])


def write_wrong_shape_archive(path, n_train=10, n_test=5, seed=0, row_length=1024):
    """The train batch holds rows of ``row_length`` values instead of 3072."""
    arrays = make_arrays(n_train, n_test, seed)
    members = archive_members(arrays)
    batch = batch_dict(arrays["x_train"], arrays["train_fine_labels"],
                       arrays["train_coarse_labels"], "train")
    batch[b"data"] = np.zeros((n_train, row_length), dtype=np.uint8)
    members[f"{FOLDER}/train"] = dumps_like_python2(batch)
    return write_tar(path, members)


def write_bad_labels_archive(path, n_train=10, n_test=5, seed=0, bad_label=100):
    """The test batch has a fine label outside 0-99."""
    arrays = make_arrays(n_train, n_test, seed)
    arrays["test_fine_labels"][0] = bad_label
    return write_tar(path, archive_members(arrays))


def write_missing_member_archive(path, missing="test", n_train=10, n_test=5, seed=0):
    """An archive without ``cifar-100-python/<missing>``."""
    members = archive_members(make_arrays(n_train, n_test, seed))
    del members[f"{FOLDER}/{missing}"]
    return write_tar(path, members)


class RunsCode:
    """Unpickling this calls ``os.system(command)``: what a malicious pickle does."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def write_code_execution_archive(path, marker, n_train=10, n_test=5, seed=0):
    """The train member is a pickle that, if unpickled naively, creates the file ``marker``
    (by running a shell command). A safe loader refuses it and ``marker`` never appears."""
    marker = os.fspath(marker)
    arrays = make_arrays(n_train, n_test, seed)
    members = archive_members(arrays)
    batch = batch_dict(arrays["x_train"], arrays["train_fine_labels"],
                       arrays["train_coarse_labels"], "train")
    batch[b"batch_label"] = RunsCode(f"touch '{marker}'")
    members[f"{FOLDER}/train"] = dumps_like_python2(batch)
    return write_tar(path, members)


def write_not_a_tar(path, payload=b"<html>404 Not Found</html>\n"):
    """A file that is not an archive at all (e.g. an error page saved by a browser)."""
    with open(path, "wb") as handle:
        handle.write(payload)
    return os.fspath(path)


if __name__ == "__main__":  # python tests/fake_cifar.py OUT.tar.gz [n_train n_test]
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "fake-cifar-100-python.tar.gz"
    sizes = [int(v) for v in sys.argv[2:4]] or [50, 20]
    written = write_fake_archive(out, *sizes)
    print(f"wrote {out}: {len(written['x_train'])} train, {len(written['x_test'])} test images")
