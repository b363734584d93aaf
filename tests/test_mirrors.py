"""Downloaded datasets judged by their content: a re-compressed copy of an original file is accepted, a
file whose content differs is refused in one line and removed, whether it comes from a mirror folder or a
URL. The small files are made here, and the digest tables pointed at them; one test reads the real
FashionMNIST as Debian ships it."""

import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from datafiles import small_digits

from imgpipe import paths
from imgpipe.config import DataConfig
from imgpipe.data.sources import downloads, fetch
from imgpipe.data.sources.idx import write_idx
from imgpipe.errors import ImgpipeError

FASHION_MNIST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
IDX_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _regzip(path: Path, content: bytes) -> None:
    """The same bytes in another gzip wrapper, as a distribution re-packs them: another level and header."""
    path.write_bytes(gzip.compress(content, compresslevel=1, mtime=1234567890))


@pytest.fixture
def originals(tmp_path, monkeypatch):
    """Small MNIST-format "original" files; torchvision's md5 table and the content table are pointed at
    them. Returns their folder, decompressed contents, images and labels."""
    import torchvision.datasets

    folder = tmp_path / "originals"
    folder.mkdir()
    images, labels = small_digits(30, size=28)
    arrays = [images[:20, 0], labels[:20], images[20:, 0], labels[20:]]
    for name, array in zip(IDX_FILES, arrays):
        write_idx(folder / name, array)
    contents = {name: gzip.decompress((folder / name).read_bytes()) for name in IDX_FILES}
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", [(name, _md5(folder / name)) for name in IDX_FILES])
    monkeypatch.setitem(downloads.CONTENT_SHA256, "MNIST", {name: _sha256(c) for name, c in contents.items()})
    monkeypatch.setattr(paths, "DOWNLOADS", tmp_path / "downloads")
    monkeypatch.delenv("IMGPIPE_MIRROR", raising=False)
    return folder, contents, images, labels


def _regzipped_mirror(root: Path, contents: dict[str, bytes]) -> Path:
    mirror = root / "mirror"
    mirror.mkdir()
    for name, content in contents.items():
        _regzip(mirror / name, content)
    return mirror


@pytest.fixture
def http_mirror():
    """Serves a folder over HTTP on 127.0.0.1; yields a function that gives the folder's URL."""
    servers = []

    def serve(folder: Path) -> str:
        handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_recompressed_copy_is_accepted_by_its_content(originals, tmp_path):
    folder, contents, images, labels = originals
    mirror = _regzipped_mirror(tmp_path, contents)
    assert _md5(mirror / IDX_FILES[0]) != _md5(folder / IDX_FILES[0])  # the archive check alone would refuse it
    splits = fetch(DataConfig(dataset="mnist", mirror=str(mirror)))
    assert np.array_equal(splits["train"].images, images[:20]) and np.array_equal(splits["test"].labels, labels[20:])
    assert splits["train"].class_names == tuple(str(d) for d in range(10))
    # Verified once, kept: the next fetch needs neither the mirror nor the network.
    assert np.array_equal(fetch(DataConfig(dataset="mnist"))["test"].images, images[20:])


@pytest.mark.parametrize("how", ["folder", "url"])
def test_one_changed_byte_is_refused_in_one_line_and_removed(originals, tmp_path, http_mirror, how):
    _, contents, _, _ = originals
    mirror = _regzipped_mirror(tmp_path, contents)
    changed = bytearray(contents["train-images-idx3-ubyte.gz"])
    changed[1000] ^= 0xFF  # one pixel of the first image
    _regzip(mirror / "train-images-idx3-ubyte.gz", bytes(changed))
    expected_md5 = dict(downloads._dataset_class("mnist").resources)["train-images-idx3-ubyte.gz"]
    where = str(mirror) if how == "folder" else http_mirror(mirror)
    with pytest.raises(ImgpipeError) as refused:
        fetch(DataConfig(dataset="mnist", mirror=where))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("train-images-idx3-ubyte.gz: checksum does not match")
    for digest in (_md5(mirror / "train-images-idx3-ubyte.gz"), expected_md5,
                   _sha256(bytes(changed)), _sha256(contents["train-images-idx3-ubyte.gz"])):
        assert digest in message
    assert not (paths.DOWNLOADS / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists()


class CutShort(http.server.BaseHTTPRequestHandler):
    """Answers every file with a chunked body that ends mid-chunk: the connection drops during the download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.write(b"3e8\r\n" + b"x" * 10)  # a chunk of 1,000 bytes promised, 10 sent
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_a_host_serving_another_file_or_cutting_off_is_passed_for_the_next(originals, tmp_path, http_mirror, monkeypatch):
    """MNIST's hosts are tried in turn until one's file verifies: a captive portal's page, a transfer cut short."""
    import torchvision.datasets

    folder, _, images, _ = originals
    portal = tmp_path / "portal"
    portal.mkdir()
    for name in IDX_FILES:
        (portal / name).write_text("<html>sign in to the hotel wifi</html>")
    cut = http.server.ThreadingHTTPServer(("127.0.0.1", 0), CutShort)
    threading.Thread(target=cut.serve_forever, daemon=True).start()
    cut_url = f"http://127.0.0.1:{cut.server_address[1]}/"
    try:
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [cut_url, http_mirror(portal), http_mirror(folder)])
        assert np.array_equal(fetch(DataConfig(dataset="mnist"))["train"].images, images[:20])
        for name in IDX_FILES:
            (paths.DOWNLOADS / "MNIST" / "raw" / name).unlink()
        monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [cut_url])
        with pytest.raises(ImgpipeError, match=r"^could not download MNIST from the dataset's own hosts \(.*IncompleteRead"):
            fetch(DataConfig(dataset="mnist"))
    finally:
        cut.shutdown()
        cut.server_close()


def test_a_recompressed_copy_from_a_url_is_accepted(originals, tmp_path, http_mirror):
    _, contents, images, _ = originals
    url = http_mirror(_regzipped_mirror(tmp_path, contents))
    assert np.array_equal(fetch(DataConfig(dataset="mnist", mirror=url))["train"].images, images[:20])


def test_without_a_content_digest_only_the_archive_counts(originals, tmp_path, monkeypatch):
    _, contents, _, _ = originals
    mirror = _regzipped_mirror(tmp_path, contents)
    monkeypatch.setitem(downloads.CONTENT_SHA256["MNIST"], "train-labels-idx1-ubyte.gz", None)
    with pytest.raises(ImgpipeError, match=r"^train-labels-idx1-ubyte.gz: checksum does not match \(md5 \w+, expected \w+\) "
                                           r"and its content cannot vouch for it \(sha256 \w+; content check unavailable"):
        fetch(DataConfig(dataset="mnist", mirror=str(mirror)))
    assert not (paths.DOWNLOADS / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").exists()


def test_a_file_that_is_not_gzip_is_refused_by_name(originals, tmp_path):
    _, contents, _, _ = originals
    mirror = _regzipped_mirror(tmp_path, contents)
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(b"<html>Not Found</html>")
    with pytest.raises(ImgpipeError, match=r"^t10k-labels-idx1-ubyte.gz: .*sha256 unreadable \(not a complete gzip file\)"):
        fetch(DataConfig(dataset="mnist", mirror=str(mirror)))
    # Damaged inside, not cut short (a copy sent over FTP in ASCII mode): zlib's own error, refused and removed alike.
    good = gzip.compress(contents["t10k-labels-idx1-ubyte.gz"], mtime=0)
    damaged = bytearray(good)
    damaged[12:20] = b"\xff" * 8  # the deflate stream's first bytes: an invalid block
    (mirror / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(damaged))
    with pytest.raises(ImgpipeError, match=r"^t10k-labels-idx1-ubyte.gz: .*sha256 unreadable \(not a complete gzip file\)"):
        fetch(DataConfig(dataset="mnist", mirror=str(mirror)))
    assert not (paths.DOWNLOADS / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()


def test_recompressed_cifar10_tar_is_accepted_by_its_content(tmp_path, monkeypatch):
    """A CIFAR-10 archive in torchvision's layout, built here, then gzipped again around the same tar."""
    import torchvision.datasets

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    planes = np.random.default_rng(0).integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)  # (N, C, H, W)
    labels = list(range(10)) + [8, 0]
    batches = {f"data_batch_{i}": (planes[2 * i - 2:2 * i], labels[2 * i - 2:2 * i]) for i in range(1, 6)}
    batches["test_batch"] = (planes[10:], labels[10:])
    blobs = {name: pickle.dumps({"data": data.reshape(len(data), -1), "labels": list(batch_labels)})
             for name, (data, batch_labels) in batches.items()}
    blobs["batches.meta"] = pickle.dumps({"label_names": names})
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as archive:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    original = gzip.compress(tar_bytes.getvalue(), compresslevel=9, mtime=0)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _regzip(mirror / "cifar-10-python.tar.gz", tar_bytes.getvalue())
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()}
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "tgz_md5", hashlib.md5(original).hexdigest())
    monkeypatch.setattr(cifar, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": md5["batches.meta"]})
    monkeypatch.setitem(downloads.CONTENT_SHA256, "CIFAR10", {"cifar-10-python.tar.gz": _sha256(tar_bytes.getvalue())})
    monkeypatch.setattr(paths, "DOWNLOADS", tmp_path / "downloads")

    splits = fetch(DataConfig(dataset="cifar10", mirror=str(mirror)))
    assert np.array_equal(splits["train"].images, planes[:10]) and np.array_equal(splits["test"].images, planes[10:])
    assert splits["train"].class_names == tuple(names) and splits["test"].labels.tolist() == [8, 0]


@pytest.mark.parametrize("dataset", sorted(downloads.DATASETS))
def test_the_content_table_names_every_file_torchvision_downloads(dataset):
    cls = downloads._dataset_class(dataset)
    assert [e.filename for e in downloads._expected_files(cls)] == list(downloads.CONTENT_SHA256[cls.__name__])


def test_debians_fashion_mnist_is_accepted_by_its_content(tmp_path, monkeypatch):
    if not FASHION_MNIST.is_dir():
        pytest.skip("../shared/datasets/fashion-mnist is absent")
    monkeypatch.setattr(paths, "DOWNLOADS", tmp_path / "downloads")
    monkeypatch.delenv("IMGPIPE_MIRROR", raising=False)
    splits = fetch(DataConfig(dataset="fashion_mnist", mirror=str(FASHION_MNIST)))
    assert splits["train"].images.shape == (60000, 1, 28, 28) and len(splits["test"]) == 10000
    assert splits["train"].class_names == FASHION_NAMES == splits["test"].class_names
    assert np.bincount(splits["test"].labels).tolist() == [1000] * 10
