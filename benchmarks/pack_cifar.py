"""Carry CIFAR-100 to a machine with an upload limit: pack the archive into lossless WebP
mosaics (about 100 MB instead of 168), split into parts of a chosen size, and rebuild an
archive in the official format from them on the other side.

    python benchmarks/pack_cifar.py pack ../shared/data/cifar-100-python.tar.gz packed --parts 2
    python benchmarks/pack_cifar.py unpack packed/part1 packed/part2 --out cifar-100-python.tar.gz

The rebuilt archive holds the same images, labels and class names in the same order (``unpack
--check ARCHIVE`` compares them with the original); it is not byte-identical, so load it with
the hash check off (``--no-verify``).
"""

import argparse
import io
import json
import os
import pickle  # writes the rebuilt archive; reading goes through the package's loader
import tarfile

import numpy as np

TILE = 1000  # images per mosaic: 25 rows x 40 columns of 32x32 images
ROWS, COLUMNS = 25, 40


def read_archive(archive):
    """The archive's images and labels, read by the package's own (restricted) loader."""
    from cifar100cnn import data

    return data.read_archive(archive, verify=False)


def to_mosaic(images):
    """(1000, 32, 32, 3) uint8 -> one (800, 1280, 3) picture."""
    return images.reshape(ROWS, COLUMNS, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(ROWS * 32, COLUMNS * 32, 3)


def from_mosaic(picture):
    """The inverse of ``to_mosaic``."""
    return picture.reshape(ROWS, 32, COLUMNS, 32, 3).transpose(0, 2, 1, 3, 4).reshape(TILE, 32, 32, 3)


def pack(archive, folder, parts):
    from PIL import Image

    from cifar100cnn import data

    arrays = read_archive(archive)
    images = np.concatenate([arrays["x_train"], arrays["x_test"]])
    tiles = len(images) // TILE
    for tile in range(tiles):
        part = os.path.join(folder, f"part{tile * parts // tiles + 1}")
        os.makedirs(part, exist_ok=True)
        Image.fromarray(to_mosaic(images[tile * TILE:(tile + 1) * TILE])).save(
            os.path.join(part, f"{tile * TILE:05d}.webp"), lossless=True, quality=100, method=4)
    labels = {f"{s}_{k}": arrays[f"{s}_{k}_labels"] for s in ("train", "test") for k in ("fine", "coarse")}
    np.savez(os.path.join(folder, "part1", "labels.npz"), **labels)
    fine_names, coarse_names, _ = data.label_names("cifar100")
    with open(os.path.join(folder, "part1", "meta.json"), "w") as handle:
        json.dump({"fine_label_names": fine_names, "coarse_label_names": coarse_names}, handle)


def read_parts(parts):
    """The packed images (train then test, uint8 (N, 32, 32, 3)), labels and class names."""
    from PIL import Image

    tiles, labels, meta = {}, None, None
    for part in parts:
        for name in sorted(os.listdir(part)):
            path = os.path.join(part, name)
            if name.endswith(".webp"):
                tiles[int(name[:-5])] = from_mosaic(np.asarray(Image.open(path).convert("RGB")))
            elif name == "labels.npz":
                labels = dict(np.load(path))
            elif name == "meta.json":
                with open(path) as handle:
                    meta = json.load(handle)
    return np.concatenate([tiles[k] for k in sorted(tiles)]), labels, meta


def unpack(parts, out):
    images, labels, meta = read_parts(parts)
    n_train = len(labels["train_fine"])
    # Level 1: the images barely compress, and the archive only lives on the other machine.
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        for split, x in (("train", images[:n_train]), ("test", images[n_train:])):
            batch = {b"batch_label": f"{split} batch (rebuilt from lossless WebP)".encode(),
                     b"filenames": [f"{split}_{i:05d}.png".encode() for i in range(len(x))],
                     b"fine_labels": labels[f"{split}_fine"].tolist(),
                     b"coarse_labels": labels[f"{split}_coarse"].tolist(),
                     b"data": x.transpose(0, 3, 1, 2).reshape(len(x), 3072)}
            _add(tar, f"cifar-100-python/{split}", pickle.dumps(batch, protocol=4))
        _add(tar, "cifar-100-python/meta", pickle.dumps(
            {key.encode(): [v.encode() for v in values] for key, values in meta.items()}, protocol=4))


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def same_content(first, second):
    """Whether two archives hold the same images and labels, in the same order."""
    a, b = read_archive(first), read_archive(second)
    return a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="archive -> folder of parts")
    p.add_argument("archive"), p.add_argument("folder")
    p.add_argument("--parts", type=int, default=2, help="how many folders to spread the mosaics over")
    u = commands.add_parser("unpack", help="parts -> archive in the official format")
    u.add_argument("parts", nargs="+", help="the part folders (part1 holds the labels)")
    u.add_argument("--out", required=True, help="the archive to write")
    u.add_argument("--check", help="an archive to compare the rebuilt one with")
    args = parser.parse_args(argv)
    if args.command == "pack":
        pack(args.archive, args.folder, args.parts)
    else:
        unpack(args.parts, args.out)
        if args.check:
            if not same_content(args.out, args.check):
                raise SystemExit(f"{args.out} differs from {args.check}")
            print(f"{args.out}: same images, labels and class names as {args.check}")


if __name__ == "__main__":
    main()
