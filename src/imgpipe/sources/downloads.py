"""Datasets torchvision downloads (MNIST, FashionMNIST, KMNIST, CIFAR-10), with mirrors.

Files land in data/downloads/ (outside DVC's outputs, so a re-run of fetch finds them) and are
checked against torchvision's checksums; files already there and verified are not fetched again.
A mirror, `data.mirror` or the environment variable IMGPIPE_MIRROR, is a URL or a local folder
holding the original file names, for offline and firewalled machines.
"""

import hashlib
import os
import shutil
import urllib.parse
from pathlib import Path

import numpy as np

from imgpipe import paths
from imgpipe.config import DataConfig
from imgpipe.errors import ImgpipeError
from imgpipe.files import atomic_path
from imgpipe.imageset import Fetched, ImageSet

DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10"}


def _dataset_class(name: str, mirror_url: str | None):
    import torchvision.datasets  # imported here: only these sources need it, and it is slow to import

    base = getattr(torchvision.datasets, DATASETS[name])
    if mirror_url is None:
        return base
    # A subclass of the same name keeps torchvision's folder layout and checksums, and only moves
    # where the files come from.
    url = mirror_url.rstrip("/") + "/"
    if hasattr(base, "mirrors"):
        return type(base.__name__, (base,), {"mirrors": [url]})
    return type(base.__name__, (base,), {"url": url + base.filename})


def _expected_files(cls) -> list[tuple[str, str]]:
    if hasattr(cls, "resources"):
        return list(cls.resources)
    return [(cls.filename, cls.tgz_md5)]


def _download_folder(cls, root: Path) -> Path:
    """Where torchvision looks for the downloaded archives of this dataset."""
    return root / cls.__name__ / "raw" if hasattr(cls, "resources") else root


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _refuse_bad_checksums(cls, root: Path, source: str) -> None:
    """A downloaded file that does not match its checksum is named, and removed so it is never used."""
    for filename, md5 in _expected_files(cls):
        path = _download_folder(cls, root) / filename
        if path.is_file() and (actual := _md5(path)) != md5:
            path.unlink()
            raise ImgpipeError(f"{filename}: checksum does not match (md5 {actual}, expected {md5}); "
                               f"{source} holds a different file")


def _copy_from_folder(cls, root: Path, folder: Path) -> None:
    """Place a local mirror's files where torchvision's download step finds them already present."""
    target = _download_folder(cls, root)
    target.mkdir(parents=True, exist_ok=True)
    for filename, md5 in _expected_files(cls):
        if (target / filename).is_file() and _md5(target / filename) == md5:
            continue
        if not folder.is_dir():
            raise ImgpipeError(f"{folder}: mirror folder not found; set data.mirror (or IMGPIPE_MIRROR) to a folder or URL")
        if not (folder / filename).is_file():
            names = ", ".join(f for f, _ in _expected_files(cls))
            raise ImgpipeError(f"{folder / filename}: not in the mirror folder, which must hold {names}")
        with atomic_path(target / filename) as tmp:
            shutil.copyfile(folder / filename, tmp)
    _refuse_bad_checksums(cls, root, f"the mirror folder {folder}")


def _to_imageset(dataset) -> ImageSet:
    data = np.asarray(dataset.data, dtype=np.uint8)
    images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # (N, C, H, W)
    names = tuple(c.split(" - ")[0] for c in dataset.classes)  # MNIST's "0 - zero" -> "0"
    targets = np.asarray(dataset.targets, dtype=np.int64)
    return ImageSet(np.ascontiguousarray(images), targets, names, tuple(range(len(names))))


def torchvision_source(config: DataConfig) -> Fetched:
    mirror = config.mirror or os.environ.get("IMGPIPE_MIRROR")
    if mirror is not None and mirror.startswith("file://"):
        mirror = urllib.parse.unquote(urllib.parse.urlparse(mirror).path)  # torchvision cannot read file:// URLs
    is_url = mirror is not None and "://" in mirror
    cls = _dataset_class(config.dataset, mirror if is_url else None)
    root = paths.DOWNLOADS
    if mirror is not None and not is_url:
        _copy_from_folder(cls, root, Path(mirror).expanduser().resolve())
    splits = {}
    for split, train in (("train", True), ("test", False)):
        try:
            splits[split] = _to_imageset(cls(str(root), train=train, download=True))
        except (RuntimeError, OSError) as error:
            _refuse_bad_checksums(cls, root, mirror or "the download")
            names = ", ".join(f for f, _ in _expected_files(cls))
            where = f"mirror {mirror}" if mirror else "the dataset's own hosts"
            raise ImgpipeError(f"could not download {cls.__name__} from {where} ({' '.join(str(error).split())[:160]}); "
                               f"set data.mirror or IMGPIPE_MIRROR to a folder or URL holding {names}") from None
    return Fetched(splits)
