"""Datasets torchvision downloads (MNIST, FashionMNIST, KMNIST, CIFAR-10), with mirrors.

Files land in data/downloads/ (outside DVC's outputs, so a re-run of fetch finds them); files already
there and verified are not fetched again. A mirror, `data.mirror` or the environment variable
IMGPIPE_MIRROR, is a URL or a local folder holding the original file names, for offline and
firewalled machines.

A file is verified by what it holds, not by its wrapper: it is accepted when its md5 is torchvision's
(the archive exactly as the hosts serve it) or when the sha256 of its decompressed bytes is the
original's (CONTENT_SHA256), so a distribution's re-compressed copy, such as Debian's
dataset-fashion-mnist, is accepted too. Anything else is refused, named, and removed. Because
torchvision would re-check the archive's md5, the verified files are loaded here: the MNIST family's
IDX archives read directly, CIFAR-10's tar extracted before torchvision reads its batches.
"""

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.parse
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgpipe import paths
from imgpipe.config import DataConfig
from imgpipe.data.imageset import Fetched, ImageSet
from imgpipe.data.sources.idx import read_pair
from imgpipe.errors import ImgpipeError
from imgpipe.files import atomic_path

DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10"}

# sha256 of each download's decompressed bytes (for CIFAR-10 the .tar inside the .tar.gz), beside the
# md5s of the archives that torchvision keeps. None: no trustworthy figure was found, so that file is
# checked by its archive md5 alone.
CONTENT_SHA256: dict[str, dict[str, str | None]] = {
    "MNIST": {
        # train pair: published for the uncompressed IDX files by several independent projects, whose
        # figures for the t10k pair equal those computed here
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        # t10k pair: computed from the real files (shared/datasets/mnist-t10k)
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "FashionMNIST": {  # computed from the real files (Debian's dataset-fashion-mnist)
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    "KMNIST": {  # no published digest of the decompressed files found
        "train-images-idx3-ubyte.gz": None,
        "train-labels-idx1-ubyte.gz": None,
        "t10k-images-idx3-ubyte.gz": None,
        "t10k-labels-idx1-ubyte.gz": None,
    },
    "CIFAR10": {"cifar-10-python.tar.gz": None},  # no published digest of the decompressed tar found
}


@dataclass(frozen=True)
class Expected:
    """One file of a dataset and the two ways it can prove to be the original."""

    filename: str
    md5: str  # torchvision's: the archive exactly as the dataset's hosts serve it
    content_sha256: str | None  # of the decompressed bytes; None where no trustworthy figure is known


def _dataset_class(name: str):
    import torchvision.datasets  # imported here: only these sources need it, and it is slow to import

    return getattr(torchvision.datasets, DATASETS[name])


def _expected_files(cls) -> list[Expected]:
    resources = cls.resources if hasattr(cls, "resources") else [(cls.filename, cls.tgz_md5)]
    content = CONTENT_SHA256[cls.__name__]
    return [Expected(filename, md5, content.get(filename)) for filename, md5 in resources]


def _download_folder(cls, root: Path) -> Path:
    """Where torchvision keeps the downloaded archives of this dataset."""
    return root / cls.__name__ / "raw" if hasattr(cls, "resources") else root


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _content_sha256(path: Path) -> str | None:
    """sha256 of the gzip file's decompressed bytes; None if it is not a complete gzip file."""
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error):  # cut short, or damaged inside (a mirror's copy sent as ASCII)
        return None
    return digest.hexdigest()


def _mismatch(path: Path, expected: Expected) -> str | None:
    """None when `path` is the original file, by its archive or by its content; else its digests
    against the expected ones, in words."""
    md5 = _md5(path)
    if md5 == expected.md5:
        return None
    content = _content_sha256(path) or "unreadable (not a complete gzip file)"
    archive = f"(md5 {md5}, expected {expected.md5})"
    if expected.content_sha256 is None:
        return (f"{archive} and its content cannot vouch for it (sha256 {content}; content check unavailable: "
                f"no trusted digest of this file's content is known)")
    if content == expected.content_sha256:
        return None
    return f"{archive} nor does its content (sha256 {content}, expected {expected.content_sha256})"


def _urls(cls, filename: str, mirror_url: str | None) -> list[str]:
    if mirror_url is not None:
        return [mirror_url.rstrip("/") + "/" + filename]
    if hasattr(cls, "mirrors"):
        return [mirror + filename for mirror in cls.mirrors]
    return [cls.url]


def _attempts(cls, filename: str, path: Path, mirror: str | None, is_url: bool) -> Iterator[str]:
    """Put `filename` at `path` from each place it may come from, in turn, yielding where it came from, in words: the
    mirror folder, the mirror URL, or each of the dataset's hosts, the next tried while the caller refuses what came.
    A download cut short leaves nothing under the real name. No host answering at all is one line."""
    if mirror is not None and not is_url:
        folder = paths.in_project(mirror).resolve()
        if not folder.is_dir():
            raise ImgpipeError(f"{folder}: mirror folder not found; set data.mirror (or IMGPIPE_MIRROR) to a folder or URL")
        if not (folder / filename).is_file():
            names = ", ".join(e.filename for e in _expected_files(cls))
            raise ImgpipeError(f"{folder / filename}: not in the mirror folder, which must hold {names}")
        with atomic_path(path) as tmp:
            shutil.copyfile(folder / filename, tmp)
        yield f"the mirror folder {folder}"
        return
    from torchvision.datasets.utils import download_url

    errors, answered = [], False
    for url in _urls(cls, filename, mirror):
        try:
            with atomic_path(path) as tmp:
                download_url(url, str(tmp.parent), tmp.name)
        # URLError and HTTPError are OSErrors; a chunked transfer cut short is an IncompleteRead, an HTTPException
        except (OSError, RuntimeError, ValueError, http.client.HTTPException) as error:
            errors.append(f"{url}: {type(error).__name__} {' '.join(str(error).split())}"[:160])
            continue
        answered = True
        yield url
    if not answered:
        names = ", ".join(e.filename for e in _expected_files(cls))
        where = f"mirror {mirror}" if mirror else "the dataset's own hosts"
        raise ImgpipeError(f"could not download {cls.__name__} from {where} ({'; '.join(errors)[:320]}); "
                           f"set data.mirror or IMGPIPE_MIRROR to a folder or URL holding {names}")


def _verified_download(cls, expected: Expected, folder: Path, mirror: str | None, is_url: bool) -> Path:
    """The file, from the download folder if it is already there and verified; otherwise fetched from the first
    place whose file verifies (a host serving a page cut short or a captive portal's is passed for the next), or
    refused: named with its digests and removed, so it is never used."""
    path = folder / expected.filename
    if path.is_file() and _mismatch(path, expected) is None:
        return path
    refused = []
    for source in _attempts(cls, expected.filename, path, mirror, is_url):
        if (digests := _mismatch(path, expected)) is None:
            return path
        path.unlink()
        refused.append((source, digests))
    (source, digests), others = refused[-1], [source for source, _ in refused[:-1]]
    also = f" (as did {', '.join(others)})" if others else ""
    raise ImgpipeError(f"{expected.filename}: checksum does not match {digests}; {source} holds a different file{also}")


def _mnist_family(cls, folder: Path) -> dict[str, ImageSet]:
    names = tuple(c.split(" - ")[0] for c in cls.classes)  # MNIST's "0 - zero" -> "0"
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = read_pair(folder / f"{prefix}-images-idx3-ubyte.gz", folder / f"{prefix}-labels-idx1-ubyte.gz")
        splits[split] = ImageSet(images, labels, names, tuple(range(len(names))))
    return splits


def _cifar(cls, archive: Path, root: Path) -> dict[str, ImageSet]:
    # Extracted here, not by torchvision, which would insist on the archive's md5; its own check of
    # each extracted batch's md5 still runs when it reads them.
    with tarfile.open(archive) as tar:
        tar.extractall(root, filter="data")
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = cls(str(root), train=train)
        except RuntimeError as error:
            raise ImgpipeError(f"{archive}: its extracted batches are not torchvision's ({error})") from None
        images = dataset.data.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        targets, names = np.asarray(dataset.targets, dtype=np.int64), tuple(dataset.classes)
        splits[split] = ImageSet(np.ascontiguousarray(images), targets, names, tuple(range(len(names))))
    return splits


def torchvision_source(config: DataConfig) -> Fetched:
    mirror = config.mirror or os.environ.get("IMGPIPE_MIRROR") or None  # an empty variable sets no mirror
    if mirror is not None and mirror.startswith("file://"):
        mirror = urllib.parse.unquote(urllib.parse.urlparse(mirror).path)  # a file:// URL is a local folder
    is_url = mirror is not None and "://" in mirror
    cls = _dataset_class(config.dataset)
    root = paths.DOWNLOADS
    folder = _download_folder(cls, root)
    files = [_verified_download(cls, expected, folder, mirror, is_url) for expected in _expected_files(cls)]
    if hasattr(cls, "resources"):
        return Fetched(_mnist_family(cls, folder))
    return Fetched(_cifar(cls, files[0], root))
