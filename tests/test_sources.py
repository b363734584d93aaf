"""Every source kind on real-format files built here, and each kind of bad input refused by name."""

import hashlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from datafiles import MNIST_T10K, small_digits, write_csv, write_image_folder
from PIL import Image

from imgpipe import paths
from imgpipe.config import DataConfig
from imgpipe.data import imageset
from imgpipe.data.card import data_card
from imgpipe.data.imageset import Fetched, ImageSet, load_fetched, save_fetched
from imgpipe.data.prepare import prepare, select_classes
from imgpipe.data.prepared import load_prepared, save_prepared
from imgpipe.data.sources import fetch, fetch_dataset
from imgpipe.data.sources.idx import read_idx, write_idx
from imgpipe.errors import ImgpipeError, InvalidSetting

# --- idx -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_folder_reads_train_and_test_pairs(tmp_path, suffix):
    images, labels = small_digits(30, size=6)
    write_idx(tmp_path / f"train-images-idx3-ubyte{suffix}", images[:20, 0])
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", labels[:20])
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images[20:, 0])
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels[20:])
    splits = fetch(DataConfig(dataset="idx", path=tmp_path))
    assert np.array_equal(splits["train"].images, images[:20]) and np.array_equal(splits["test"].labels, labels[20:])
    assert splits["train"].class_names == ("0", "1", "2", "3") and splits["train"].class_labels == (0, 1, 2, 3)


def test_idx_counts_that_disagree_are_refused(tmp_path):
    images, labels = small_digits(10)
    write_idx(tmp_path / "train-images-idx3-ubyte", images[:, 0])
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels[:9])
    with pytest.raises(ImgpipeError, match=r"train-labels-idx1-ubyte: holds 9 labels but train-images-idx3-ubyte holds 10 images"):
        fetch(DataConfig(dataset="idx", path=tmp_path))


@pytest.mark.parametrize("code, values, message", [
    (0x09, [1, 0, -1, 2], "labels must be whole numbers >= 0, got -1 at item 2"),  # int8: -1 was the last class
    (0x0D, [1.0, 0.5, 2.0, 0.0], "labels must be whole numbers >= 0, got >f4 values")])
def test_idx_labels_that_name_no_class_are_refused_naming_the_item(tmp_path, code, values, message):
    write_idx(tmp_path / "train-images-idx3-ubyte", small_digits(4)[0][:, 0])
    labels = np.array(values, dtype=np.dtype({0x09: np.int8, 0x0D: ">f4"}[code]))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, code, 1]) + np.array([4], ">u4").tobytes() + labels.tobytes())
    with pytest.raises(ImgpipeError) as caught:
        fetch(DataConfig(dataset="idx", path=tmp_path))
    assert str(caught.value) == f"{tmp_path / 'train-labels-idx1-ubyte'}: {message}"


def test_idx_classes_are_the_training_labels_and_keep_their_numbers(tmp_path):
    """A subset of the digits (0, 1, 2, 5) has four classes, not six with two empty; a test label the training split
    lacks, an empty pair and a file both plain and gzipped are refused in one line."""
    images = small_digits(8)[0][:, 0]
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 5, 0, 1, 2, 5], np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:3])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([5, 0, 2], np.uint8))
    splits = fetch(DataConfig(dataset="idx", path=tmp_path))
    assert splits["train"].class_names == ("0", "1", "2", "5") and splits["train"].class_labels == (0, 1, 2, 5)
    assert splits["test"].labels.tolist() == [3, 0, 2]
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([5, 7, 2], np.uint8))
    with pytest.raises(ImgpipeError, match=r"t10k-labels-idx1-ubyte: label 7 \(item 1\) does not occur in the training labels"):
        fetch(DataConfig(dataset="idx", path=tmp_path))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:0])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(ImgpipeError, match=r"t10k-images-idx3-ubyte: holds no images"):
        fetch(DataConfig(dataset="idx", path=tmp_path))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:3])
    with pytest.raises(ImgpipeError, match=r"holds both t10k-images-idx3-ubyte and t10k-images-idx3-ubyte.gz; keep one"):
        fetch(DataConfig(dataset="idx", path=tmp_path))
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:3])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([5, 0, 2], np.uint8))
    write_idx(tmp_path / "test-images-idx3-ubyte", images[:2])  # two test pairs: neither is dropped unseen
    write_idx(tmp_path / "test-labels-idx1-ubyte", np.array([5, 0], np.uint8))
    with pytest.raises(ImgpipeError, match=r"two test pairs \((t10k|test)-images-idx3-ubyte and (t10k|test)-images-idx3-ubyte\); keep one"):
        fetch(DataConfig(dataset="idx", path=tmp_path))
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # test pairs only: no KeyError either
        (tmp_path / name).unlink()
    with pytest.raises(ImgpipeError, match=r"two test pairs"):
        fetch(DataConfig(dataset="idx", path=tmp_path))


def test_an_idx_header_cut_short_is_refused(tmp_path):
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 3]) + np.array([10], ">u4").tobytes())  # 3 sizes promised, 1 given
    with pytest.raises(ImgpipeError, match=r"short: header promises 3 sizes but the file has 8 bytes"):
        read_idx(tmp_path / "short")


def test_truncated_idx_file_is_refused(tmp_path):
    path = write_idx(tmp_path / "train-images-idx3-ubyte", small_digits(10)[0][:, 0])
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ImgpipeError, match=r"train-images-idx3-ubyte: header promises \(10, 8, 8\) values"):
        read_idx(path)
    import gzip

    damaged = bytearray(gzip.compress(write_idx(tmp_path / "plain", small_digits(10)[0][:, 0]).read_bytes(), mtime=0))
    damaged[12:20] = b"\xff" * 8  # an invalid deflate block: zlib's error, not a cut-short file's
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(bytes(damaged))
    with pytest.raises(ImgpipeError, match=r"train-images-idx3-ubyte.gz: cannot be read"):
        read_idx(tmp_path / "train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason="../shared/datasets/mnist-t10k is absent")
def test_real_mnist_test_set_reads_as_documented():
    splits = fetch(DataConfig(dataset="idx", path=MNIST_T10K))
    train = splits["train"]
    assert train.images.shape == (10000, 1, 28, 28)
    assert list(train.class_counts().values()) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- csv -------------------------------------------------------------------------------------------

def test_csv_with_gapped_labels_maps_them_to_named_classes(tmp_path):
    images, labels = small_digits(24, size=4)
    letters = np.array([0, 1, 10, 24])[labels]  # A, B, K, Y: the gaps of Sign Language MNIST
    write_csv(tmp_path / "train.csv", images, letters)
    write_csv(tmp_path / "test.csv", images[:8], letters[:8])
    config = DataConfig(dataset="csv", path=tmp_path / "train.csv", test_path=tmp_path / "test.csv",
                        class_names=("A", "B", "K", "Y"))
    splits = fetch(config)
    assert splits["train"].class_names == ("A", "B", "K", "Y")
    assert np.array_equal(splits["train"].labels, labels) and np.array_equal(splits["train"].images, images)
    assert len(splits["test"]) == 8


SIGN_LABELS = [label for label in range(25) if label != 9]  # Sign Language MNIST: A..Y without J (9)
SIGN_LETTERS = [chr(ord("A") + label) for label in SIGN_LABELS]


def _sign_csv(path):
    """Four 4x4 images per label of Sign Language MNIST, each image filled with its own label value."""
    labels = np.repeat(SIGN_LABELS, 4)
    images = np.broadcast_to(labels[:, None, None, None], (len(labels), 1, 4, 4)).astype(np.uint8)
    return write_csv(path, images, labels)


@pytest.mark.parametrize("class_names, kept_names", [(None, ("10", "11")), (tuple(SIGN_LETTERS), ("K", "L"))])
def test_csv_classes_are_chosen_by_their_own_label_values_not_positions(tmp_path, class_names, kept_names):
    path = _sign_csv(tmp_path / "sign_mnist_train.csv")
    raw = fetch(DataConfig(dataset="csv", path=path, class_names=class_names))
    assert raw["train"].class_labels == tuple(SIGN_LABELS)
    prepared = prepare(raw, 0.25, 0.25, seed=0, classes=[10, 11])
    assert prepared.class_names == kept_names and prepared.class_labels == (10, 11)
    for split in ("train", "val", "test"):
        images = getattr(prepared, split)
        # Every image is filled with its CSV label: label 10 became class 0, label 11 class 1
        # (by position, 10 and 11 would have been the labels 11 and 12).
        assert np.array_equal(images.images[:, 0, 0, 0], np.array([10, 11])[images.labels]), split
    assert sum(len(getattr(prepared, split)) for split in ("train", "val", "test")) == 8
    save_prepared(prepared, tmp_path / "prepared")
    assert load_prepared(tmp_path / "prepared").class_labels == (10, 11)  # the rule holds after prepare too
    named = prepare(raw, 0.25, 0.25, seed=0, classes=[kept_names[1], kept_names[0]])
    assert named.class_names == kept_names[::-1] and named.class_labels == (11, 10)


def test_csv_label_that_does_not_occur_lists_the_labels(tmp_path):
    raw = fetch(DataConfig(dataset="csv", path=_sign_csv(tmp_path / "signs.csv"), class_names=tuple(SIGN_LETTERS)))
    with pytest.raises(InvalidSetting, match=r"^classes: no class has the label 9; the labels are 0\.\.8, 10\.\.24$"):
        select_classes(raw, [9, 10])


def test_class_names_listing_a_name_twice_are_refused():
    with pytest.raises(InvalidSetting, match=r"^class_names: lists 'B' twice: one name per class$"):
        DataConfig(dataset="csv", class_names=("A", "B", "C", "B"))


def test_csv_of_words_has_named_classes(tmp_path):
    path = write_csv(tmp_path / "words.csv", np.zeros((4, 1, 2, 2), np.uint8), ["cat", "dog", "cat", "dog"])
    raw = fetch(DataConfig(dataset="csv", path=path))
    assert raw["train"].class_names == ("cat", "dog") and raw["train"].class_labels is None
    with pytest.raises(InvalidSetting, match=r"classes: 0 is ambiguous.*write the names, e.g. \[cat, dog\]"):
        select_classes(raw, [0, 1])


def test_csv_labels_are_read_as_text_whatever_pandas_would_guess(tmp_path):
    """A class named NA is a class, not an empty cell; labels 0..9 then letters in a file large enough for pandas to
    read in chunks (ints beside strings: np.unique's TypeError) are words, alike in a small file."""
    path = write_csv(tmp_path / "na.csv", np.zeros((4, 1, 2, 2), np.uint8), ["NA", "B", "NA", "null"])
    assert fetch(DataConfig(dataset="csv", path=path))["train"].class_names == ("B", "NA", "null")
    big = tmp_path / "big.csv"
    big.write_text("label,p1,p2,p3,p4\n" + "0,1,2,3,4\n1,1,2,3,4\n" * 200_000 + "A,1,2,3,4\n")
    raw = fetch(DataConfig(dataset="csv", path=big))["train"]
    assert raw.class_names == ("0", "1", "A") and raw.class_labels is None and len(raw) == 400_001


@pytest.mark.parametrize("train_labels, test_labels, line, shown", [
    ([0, 1, 0, 1], [1, 0, "J", 1], 4, "'J'"),  # numbers in training, a letter in test
    (["A", "B", "A", "B"], ["A", 1, "B"], 3, "'1'")])
def test_a_test_label_unlike_the_training_labels_is_named_by_its_own_line(tmp_path, train_labels, test_labels, line, shown):
    """The test split's labels are read as the training split's kind: one stray word names its own line, not the
    first line of a column that became text."""
    train = write_csv(tmp_path / "train.csv", np.zeros((4, 1, 2, 2), np.uint8), train_labels)
    test = write_csv(tmp_path / "test.csv", np.zeros((len(test_labels), 1, 2, 2), np.uint8), test_labels)
    with pytest.raises(ImgpipeError) as caught:
        fetch(DataConfig(dataset="csv", path=train, test_path=test))
    assert str(caught.value) == f"{test} line {line}: label {shown} does not occur in train.csv"


def test_csv_colour_layout_from_params(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 3, 2, 5), dtype=np.uint8)
    write_csv(tmp_path / "rgb.csv", images, [0, 1] * 3)
    splits = fetch(DataConfig(dataset="csv", path=tmp_path / "rgb.csv", image_size=(2, 5), channels=3))
    assert np.array_equal(splits["train"].images, images)


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines.__setitem__(3, lines[3].split(",", 1)[0] + ",abc," + lines[3].split(",", 2)[2]),
     r"bad.csv line 4, column 'pixel1': 'abc' is not a number"),
    (lambda lines: lines.__setitem__(2, lines[2] + ",7"), r"bad.csv line 3: 18 columns where the header has 17"),
    (lambda lines: lines.__setitem__(1, lines[1] + ",7"), r"bad.csv line 2: 18 columns where the header has 17"),  # the first row
    (lambda lines: lines.__setitem__(5, lines[5].rsplit(",", 1)[0]), r"bad.csv line 6: no value in column 'pixel16'"),
    (lambda lines: lines.__setitem__(4, lines[4].rsplit(",", 1)[0] + ",300"), r"bad.csv line 5, column 'pixel16': 300 is not a pixel value"),
    (lambda lines: lines.__setitem__(0, lines[0].replace("label", "letter")), r"bad.csv: no label column 'label' \(columns: letter, pixel1"),
    (lambda lines: lines.__setitem__(4, lines[4].rsplit(",", 1)[0] + ",NA"), r"bad.csv line 5, column 'pixel16': 'NA' is not a number"),
    (lambda lines: lines.__setitem__(4, lines[4].rsplit(",", 1)[0] + "," + str(2**64)),
     r"bad.csv line 5, column 'pixel16': 1.8\d*e\+19 is not a pixel value"),
    (lambda lines: lines.__setitem__(slice(1, None), [line.rsplit(",", 1)[0] + ",True" for line in lines[1:]]),  # a bool column
     r"bad.csv line 2, column 'pixel16': (np\.)?True_? is not a number"),
])
def test_bad_csv_cells_are_named_by_line_and_column(tmp_path, edit, message):
    images, labels = small_digits(8, size=4)
    path = write_csv(tmp_path / "bad.csv", images, labels)
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImgpipeError, match=message):
        fetch(DataConfig(dataset="csv", path=path))


def test_csv_that_is_not_square_asks_for_the_size(tmp_path):
    path = write_csv(tmp_path / "odd.csv", np.zeros((2, 1, 2, 3), np.uint8), [0, 1])
    with pytest.raises(ImgpipeError, match="6 pixel columns are not a square image.*set data.image_size"):
        fetch(DataConfig(dataset="csv", path=path))


# --- imagefolder -----------------------------------------------------------------------------------

def _logo_folder(root):
    """Arsenal/Liverpool-style: RGBA PNGs, a palette PNG with transparency, a JPEG, a 16-bit PNG."""
    (root / "arsenal").mkdir(parents=True)
    (root / "liverpool").mkdir()
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(root / "arsenal" / "a.png")
    Image.fromarray(rgba, "RGBA").save(root / "arsenal" / "b.png")
    palette = Image.fromarray(np.array([[0, 1] * 5] * 10, np.uint8), "P")
    palette.putpalette([0, 0, 255, 255, 255, 255] + [0] * 762)
    palette.info["transparency"] = 1
    palette.save(root / "liverpool" / "c.png", transparency=1)
    Image.fromarray(np.full((10, 10, 3), 90, np.uint8)).save(root / "liverpool" / "d.jpg", quality=100)
    Image.fromarray(np.full((10, 10), 65535, np.uint16)).save(root / "liverpool" / "e.png")
    return root


def test_image_folder_converts_every_kind_of_image(tmp_path):
    root = _logo_folder(tmp_path / "logos")
    splits = fetch(DataConfig(dataset="imagefolder", path=root, channels=3, background=(0, 255, 0)))
    train = splits["train"]
    assert train.class_names == ("arsenal", "liverpool") and train.labels.tolist() == [0, 0, 1, 1, 1]
    assert train.images.shape == (5, 3, 10, 10)
    a = train.images[0]
    assert a[:, 0, 0].tolist() == [200, 0, 0] and a[:, 9, 0].tolist() == [0, 255, 0]  # transparency on green
    c = train.images[2]
    assert c[:, 0, 0].tolist() == [0, 0, 255] and c[:, 0, 1].tolist() == [0, 255, 0]  # palette + transparency
    assert abs(int(train.images[3, 0, 5, 5]) - 90) <= 2  # JPEG
    assert train.images[4, :, 0, 0].tolist() == [255, 255, 255]  # 16-bit white stays white, not clipped


def test_image_folder_resizes_and_converts_to_gray(tmp_path):
    root = _logo_folder(tmp_path / "logos")
    Image.new("RGB", (20, 14), (10, 20, 30)).save(root / "arsenal" / "big.png")
    train = fetch(DataConfig(dataset="imagefolder", path=root, channels=1, image_size=(6, 8)))["train"]
    assert train.images.shape == (6, 1, 6, 8)
    # ITU-R 601 luma, as PIL's "L": 0.299 * 10 + 0.587 * 20 + 0.114 * 30 = 18.15 (not the red 10, not the mean 20)
    assert sum(bool((image == 18).all()) for image in train.images) == 1


def test_a_split_folder_without_train_is_refused_not_taken_for_a_class(tmp_path):
    images, labels = small_digits(12)
    write_image_folder(tmp_path, images[:8], labels[:8], ["3", "7", "a", "b"])
    write_image_folder(tmp_path / "test", images[8:], labels[8:], ["3", "7", "a", "b"])
    with pytest.raises(ImgpipeError, match=r"holds a test/ split folder but no train/ one; put the training class folders "):
        fetch(DataConfig(dataset="imagefolder", path=tmp_path))


def test_train_valid_test_layout(tmp_path):
    images, labels = small_digits(24)
    for split, part in (("train", slice(0, 12)), ("valid", slice(12, 18)), ("test", slice(18, 24))):
        write_image_folder(tmp_path / split, images[part], labels[part], ["3", "7", "a", "b"])
    splits = fetch(DataConfig(dataset="imagefolder", path=tmp_path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert splits["train"].images.shape[1] == 1  # grayscale PNGs stay one channel
    prepared = prepare(splits, 0.2, 0.2, seed=0)
    assert (len(prepared.train), len(prepared.val), len(prepared.test)) == (12, 6, 6)


def test_split_folders_are_found_in_any_case_and_hidden_files_are_passed_over(tmp_path):
    """Kaggle's Training/ and Testing/ are splits, not two classes; a .thumbs/ folder and macOS's ._a.png are no images."""
    images, labels = small_digits(16)
    write_image_folder(tmp_path / "Training", images[:8], labels[:8], ["3", "7", "a", "b"])
    write_image_folder(tmp_path / "Testing", images[8:], labels[8:], ["3", "7", "a", "b"])
    shown = next((tmp_path / "Training").iterdir())
    (shown / ".thumbs").mkdir()
    Image.new("L", (8, 8)).save(shown / ".thumbs" / "x.png")
    (shown / "._00000.png").write_bytes(b"\x00\x05\x16\x07 resource fork")  # not an image: refused unless passed over
    splits = fetch(DataConfig(dataset="imagefolder", path=tmp_path))
    assert {split: len(s) for split, s in splits.items()} == {"train": 8, "test": 8}
    assert splits["train"].class_names == ("3", "7", "a", "b")
    write_image_folder(tmp_path / "validation", images[:4], labels[:4], ["3", "7", "a", "b"])
    write_image_folder(tmp_path / "val", images[:4], labels[:4], ["3", "7", "a", "b"])
    with pytest.raises(ImgpipeError, match=r"both val/ and validation/ hold the val split; keep one"):
        fetch(DataConfig(dataset="imagefolder", path=tmp_path))


def test_image_folder_refuses_class_numbers_as_ambiguous(tmp_path):
    root = _logo_folder(tmp_path / "logos")
    raw = fetch(DataConfig(dataset="imagefolder", path=root, channels=3))
    assert raw["train"].class_labels is None
    message = (r"^classes: 0 is ambiguous: the classes have names, not numbers \(an image folder's are its folder "
               r"names\); write the names, e.g. \[arsenal, liverpool\]$")
    with pytest.raises(InvalidSetting, match=message):
        select_classes(raw, [0, 1])
    assert select_classes(raw, ["liverpool", "arsenal"])["train"].class_names == ("liverpool", "arsenal")


def test_image_folder_with_numbered_folders_takes_numbers_as_names(tmp_path):
    images, labels = small_digits(24)
    write_image_folder(tmp_path / "digits", images, labels, ["10", "3", "7", "a"])  # sorted: 10, 3, 7, a
    raw = fetch(DataConfig(dataset="imagefolder", path=tmp_path / "digits"))
    subset = select_classes(raw, [7, 3])
    train = subset["train"]
    assert train.class_names == ("7", "3") and train.class_labels is None
    assert np.array_equal(train.images[train.labels == 0], images[labels == 2])  # folder "7"
    assert np.array_equal(train.images[train.labels == 1], images[labels == 1])  # folder "3"
    with pytest.raises(InvalidSetting, match=r"classes: 2 is ambiguous"):  # position 2 is "7": never taken
        select_classes(raw, [2, 3])


def _grey_then_colour(root):
    """Four grey PNGs in class a, which sorts first, and four colour ones in class b."""
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    for i in range(4):
        Image.fromarray(np.full((4, 4), 100, np.uint8), "L").save(root / "a" / f"{i}.png")
        Image.fromarray(np.tile(np.array([200, 30, 60], np.uint8), (4, 4, 1)), "RGB").save(root / "b" / f"{i}.png")
    return root


def test_one_colour_class_makes_the_folder_colour_and_the_data_card_says_why(tmp_path):
    root = _grey_then_colour(tmp_path / "images")
    fetched = fetch_dataset(DataConfig(dataset="imagefolder", path=root))
    train = fetched.splits["train"]
    assert train.images.shape == (8, 3, 4, 4) and train.labels.tolist() == [0] * 4 + [1] * 4
    assert (train.images[4:] == np.array([200, 30, 60])[:, None, None]).all()  # the colour images keep their colours
    assert (train.images[:4] == 100).all()
    decision = "channels: 3 (colour), because 4 of 8 images are in colour, e.g. b/0.png"
    assert fetched.decisions == (decision,)
    # As the stages pass it on: fetch saves it beside the raw splits, prepare puts it on the data card.
    save_fetched(fetched, tmp_path / "raw")
    raw = load_fetched(tmp_path / "raw")
    assert raw.decisions == (decision,)
    assert data_card(prepare(raw.splits, 0.25, 0.25, seed=0), raw.decisions)["decisions"] == [decision]


def test_colour_in_any_split_makes_every_split_colour(tmp_path):
    images, labels = small_digits(16)
    write_image_folder(tmp_path / "train", images[:12], labels[:12], ["a", "b", "c", "d"])
    write_image_folder(tmp_path / "test", images[12:], labels[12:], ["a", "b", "c", "d"])
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "test" / "d" / "blue.png")
    fetched = fetch_dataset(DataConfig(dataset="imagefolder", path=tmp_path))
    assert {split: s.images.shape[1] for split, s in fetched.splits.items()} == {"train": 3, "test": 3}
    assert fetched.decisions == ("channels: 3 (colour), because 1 of 17 images is in colour, e.g. test/d/blue.png",)
    grey = images[:12][np.argsort(labels[:12], kind="stable"), 0]  # as the folder lists them: class by class
    assert all(np.array_equal(fetched.splits["train"].images[:, c], grey) for c in range(3))  # grey in every channel


def test_all_grey_folder_stays_one_channel_unless_asked(tmp_path):
    images, labels = small_digits(8)
    root = write_image_folder(tmp_path / "grey", images, labels, ["a", "b", "c", "d"])
    fetched = fetch_dataset(DataConfig(dataset="imagefolder", path=root))
    assert fetched.splits["train"].images.shape[1] == 1
    assert fetched.decisions == ("channels: 1 (grey): every image is greyscale",)
    asked = fetch_dataset(DataConfig(dataset="imagefolder", path=root, channels=3))
    assert asked.splits["train"].images.shape[1] == 3 and asked.decisions == ("channels: 3, as data.channels asks",)


def test_raw_data_without_decisions_still_loads(tmp_path):
    fetched = fetch_dataset(DataConfig())
    assert fetched.decisions == ()
    save_fetched(fetched, tmp_path / "raw")
    (tmp_path / "raw" / "fetch.json").unlink()  # data/raw written before decisions were recorded
    raw = load_fetched(tmp_path / "raw")
    assert raw.decisions == () and np.array_equal(raw.splits["train"].images, fetched.splits["train"].images)
    assert data_card(prepare(raw.splits, 0.15, 0.2, seed=0), raw.decisions)["decisions"] == []


def test_non_image_files_are_refused_or_skipped_by_switch(tmp_path, capsys):
    root = _logo_folder(tmp_path / "logos")
    (root / "arsenal" / "notes.txt").write_text("not a logo")
    with pytest.raises(ImgpipeError, match=r"arsenal/notes.txt: not an image file; remove it, or set data.on_bad_file: skip"):
        fetch(DataConfig(dataset="imagefolder", path=root))
    train = fetch(DataConfig(dataset="imagefolder", path=root, on_bad_file="skip"))["train"]
    assert len(train) == 5 and "skipped 1 file(s) that are not images" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_image_is_named(tmp_path, damage):
    root = _logo_folder(tmp_path / "logos")
    path = root / "liverpool" / "c.png"
    path.write_bytes(path.read_bytes()[:40] if damage == "truncated" else b"\x89PNG not really")
    with pytest.raises(ImgpipeError, match=r"liverpool/c.png: not a readable image"):
        fetch(DataConfig(dataset="imagefolder", path=root))


def test_mixed_sizes_without_resize_are_refused(tmp_path):
    root = _logo_folder(tmp_path / "logos")
    Image.new("RGB", (12, 10)).save(root / "liverpool" / "wide.png")
    fetched = fetch_dataset(DataConfig(dataset="imagefolder", path=root))  # decoded as fetch writes it
    with pytest.raises(ImgpipeError, match=r"wide.png: is 12x10 pixels but .*a.png is 10x10; set data.image_size"):
        save_fetched(fetched, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".raw.tmp-*"))


def test_a_split_of_another_size_names_the_training_image_the_size_came_from(tmp_path):
    for split, size in (("train", 10), ("test", 12)):
        for name in ("a", "b"):
            (tmp_path / "folder" / split / name).mkdir(parents=True)
            Image.new("L", (size, size)).save(tmp_path / "folder" / split / name / "1.png")
    fetched = fetch_dataset(DataConfig(dataset="imagefolder", path=tmp_path / "folder"))
    with pytest.raises(ImgpipeError, match=r"test/a/1.png: is 12x12 pixels but \S*train/a/1.png is 10x10; set data.image_size"):
        save_fetched(fetched, tmp_path / "raw")


def test_a_folder_larger_than_a_chunk_is_fetched_intact_and_in_order(tmp_path, monkeypatch):
    images, labels = small_digits(n=700, size=8)  # more than 256 files: decoded by a pool of processes
    root = write_image_folder(tmp_path / "digits", images, labels, ["a", "b", "c", "d"])
    monkeypatch.setattr(imageset, "CHUNK_BYTES", 64 * 50)  # 50 images a chunk: 14 chunks
    save_fetched(fetch_dataset(DataConfig(dataset="imagefolder", path=root)), tmp_path / "raw")
    raw = load_fetched(tmp_path / "raw").splits["train"]
    order = np.argsort(labels, kind="stable")  # the folder lists class by class, each in file order
    assert isinstance(raw.images, np.memmap) and np.array_equal(raw.images, images[order])
    assert np.array_equal(raw.labels, labels[order])


KILLED_FETCH = """
import sys
from pathlib import Path
from imgpipe.data import imageset
from imgpipe.config import DataConfig
from imgpipe.data.imageset import save_fetched
from imgpipe.data.sources import fetch_dataset

image_folder = sys.modules["imgpipe.data.sources.image_folder"]  # the package names its function so too
imageset.CHUNK_BYTES = 64 * 10  # 10 images a chunk
decode = image_folder.decode
def decode_then_die(path, *args, **kwargs):
    if path.name == "00150.png":  # half-way, past several chunks already written
        print("dying", flush=True)
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    return decode(path, *args, **kwargs)
image_folder.decode = decode_then_die
save_fetched(fetch_dataset(DataConfig(dataset="imagefolder", path=Path(sys.argv[1]))), Path(sys.argv[2]))
"""


def test_a_fetch_killed_half_way_leaves_the_previous_output_intact(tmp_path):
    images, labels = small_digits(n=200, size=8)  # under 256 files: decoded in this process, so the kill is its own
    root = write_image_folder(tmp_path / "digits", images, labels, ["a", "b", "c", "d"])
    previous = ImageSet(images[:5], labels[:5], ("a", "b", "c", "d"))
    save_fetched(Fetched({"train": previous}), tmp_path / "raw")
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    done = subprocess.run([sys.executable, "-c", KILLED_FETCH, str(root), str(tmp_path / "raw")], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL and "dying" in done.stdout
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before
    assert len(list(tmp_path.glob(".raw.tmp-*"))) == 1  # what the killed run wrote, left behind...
    save_fetched(fetch_dataset(DataConfig(dataset="imagefolder", path=root)), tmp_path / "raw")
    assert not list(tmp_path.glob(".raw.tmp-*"))  # ...until the next run removes it
    assert len(load_fetched(tmp_path / "raw").splits["train"]) == 200


def test_missing_empty_and_imageless_folders_are_named(tmp_path):
    with pytest.raises(ImgpipeError, match=r"nowhere: not found or not a folder"):
        fetch(DataConfig(dataset="imagefolder", path=tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImgpipeError, match=r"empty: holds no class folders"):
        fetch(DataConfig(dataset="imagefolder", path=tmp_path / "empty"))
    with pytest.raises(ImgpipeError, match=r"empty: holds no \*-images-idx3-ubyte"):
        fetch(DataConfig(dataset="idx", path=tmp_path / "empty"))
    root = _logo_folder(tmp_path / "logos")
    (root / "chelsea").mkdir()
    with pytest.raises(ImgpipeError, match=r"chelsea: class folder holds no images"):
        fetch(DataConfig(dataset="imagefolder", path=root))
    with pytest.raises(ImgpipeError, match=r"missing.csv: not found"):
        fetch(DataConfig(dataset="csv", path=tmp_path / "missing.csv"))


def test_unknown_dataset_lists_the_sources():
    with pytest.raises(InvalidSetting, match="unknown dataset 'mnsit'; choose one of: digits, mnist, fashion_mnist"):
        fetch(DataConfig(dataset="mnsit"))


def test_local_source_without_path_asks_for_it():
    with pytest.raises(InvalidSetting, match="dataset 'csv' reads local files: set data.path"):
        fetch(DataConfig(dataset="csv"))


# --- downloads through a mirror --------------------------------------------------------------------

@pytest.fixture
def mnist_mirror(tmp_path, monkeypatch):
    """A local mirror of MNIST-format files; torchvision's checksum table is pointed at them."""
    import torchvision.datasets

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    images, labels = small_digits(30, size=28)
    files = {
        "train-images-idx3-ubyte.gz": images[:20, 0], "train-labels-idx1-ubyte.gz": labels[:20],
        "t10k-images-idx3-ubyte.gz": images[20:, 0], "t10k-labels-idx1-ubyte.gz": labels[20:],
    }
    for name, array in files.items():
        write_idx(mirror / name, array)
    resources = [(name, hashlib.md5((mirror / name).read_bytes()).hexdigest()) for name in files]
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    monkeypatch.setattr(paths, "DOWNLOADS", tmp_path / "downloads")
    return mirror, images, labels


def test_download_from_a_local_mirror_needs_no_network(mnist_mirror, monkeypatch):
    mirror, images, labels = mnist_mirror
    splits = fetch(DataConfig(dataset="mnist", mirror=str(mirror)))
    assert np.array_equal(splits["train"].images, images[:20]) and np.array_equal(splits["test"].labels, labels[20:])
    assert splits["train"].class_names[:2] == ("0", "1")
    # Verified files are not fetched again: the mirror can go away.
    shutil.rmtree(mirror)
    assert np.array_equal(fetch(DataConfig(dataset="mnist", mirror=str(mirror)))["train"].images, images[:20])
    monkeypatch.delenv("IMGPIPE_MIRROR", raising=False)
    assert np.array_equal(fetch(DataConfig(dataset="mnist"))["train"].images, images[:20])


def test_mirror_from_the_environment(mnist_mirror, monkeypatch):
    mirror, images, _ = mnist_mirror
    monkeypatch.setenv("IMGPIPE_MIRROR", mirror.as_uri())
    assert np.array_equal(fetch(DataConfig(dataset="mnist"))["train"].images, images[:20])
    shutil.rmtree(paths.DOWNLOADS)
    monkeypatch.setattr(paths, "ROOT", mirror.parent)  # a relative folder is the project's, as data.mirror's is
    monkeypatch.setenv("IMGPIPE_MIRROR", mirror.name)
    assert np.array_equal(fetch(DataConfig(dataset="mnist"))["train"].images, images[:20])


def test_download_with_a_wrong_checksum_is_refused_and_removed(mnist_mirror):
    mirror, _, _ = mnist_mirror
    write_idx(mirror / "train-labels-idx1-ubyte.gz", np.zeros(20, np.uint8))  # not the file the table expects
    with pytest.raises(ImgpipeError, match=r"train-labels-idx1-ubyte.gz: checksum does not match \(md5 \w+, expected \w+\)"):
        fetch(DataConfig(dataset="mnist", mirror=str(mirror)))
    assert not (paths.DOWNLOADS / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").exists()


def test_cifar10_from_a_local_mirror_keeps_channels_apart(tmp_path, monkeypatch):
    """A CIFAR-10 archive in torchvision's format (pickled batches of R, G and B planes), built here."""
    import io
    import pickle
    import tarfile

    import torchvision.datasets

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8)  # (N, C, H, W) as the archive stores it
    labels = list(range(10)) + [8, 0]
    members = {f"data_batch_{i}": (planes[2 * (i - 1):2 * i], labels[2 * (i - 1):2 * i]) for i in range(1, 6)}
    members["test_batch"] = (planes[10:], labels[10:])
    blobs = {name: pickle.dumps({"data": data.reshape(len(data), -1), "labels": list(batch_labels)})
             for name, (data, batch_labels) in members.items()}
    blobs["batches.meta"] = pickle.dumps({"label_names": names})
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as archive:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()}
    cifar = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cifar, "tgz_md5", hashlib.md5((mirror / "cifar-10-python.tar.gz").read_bytes()).hexdigest())
    monkeypatch.setattr(cifar, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(cifar, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cifar, "meta", {**cifar.meta, "md5": md5["batches.meta"]})
    monkeypatch.setattr(paths, "DOWNLOADS", tmp_path / "downloads")

    splits = fetch(DataConfig(dataset="cifar10", mirror=str(mirror)))
    assert np.array_equal(splits["train"].images, planes[:10]) and np.array_equal(splits["test"].images, planes[10:])
    assert splits["train"].class_names == tuple(names) and splits["test"].labels.tolist() == [8, 0]
    subset = select_classes(splits, ["airplane", "ship"])
    assert subset["train"].class_names == ("airplane", "ship") and subset["test"].labels.tolist() == [1, 0]
