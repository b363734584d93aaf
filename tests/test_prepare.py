import hashlib

import numpy as np
import pytest
from conftest import random_images

from imgpipe.config import DataConfig
from imgpipe.data import imageset
from imgpipe.data.card import data_card
from imgpipe.data.imageset import ImageSet, load, load_splits, save_splits
from imgpipe.data.prepare import channel_stats, prepare, prepare_into, stratified_split
from imgpipe.data.prepared import load_prepared, save_prepared
from imgpipe.data.sources import digits as digits_source
from imgpipe.errors import ImgpipeError, InvalidSetting


def digits():
    return digits_source(DataConfig()).splits


def test_digits_source_spreads_its_17_levels_over_uint8():
    train = digits()["train"]
    assert train.images.shape == (1797, 1, 8, 8) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and len(np.unique(train.images)) == 17
    assert train.class_names == tuple("0123456789")


def test_digits_source_reads_what_scikit_learn_loads():
    """The source reads scikit-learn's file itself (no import at fetch): the same images and labels, in order."""
    from sklearn.datasets import load_digits

    reference, train = load_digits(), digits()["train"]
    np.testing.assert_array_equal(train.images, np.rint(reference.images * (255 / 16)).astype(np.uint8)[:, None])
    np.testing.assert_array_equal(train.labels, reference.target)
    assert train.class_labels == tuple(int(label) for label in reference.target_names)


def test_splits_are_disjoint_stratified_and_complete(digits_prepared):
    splits = [digits_prepared.train, digits_prepared.val, digits_prepared.test]
    assert sum(len(s) for s in splits) == 1797
    total = np.bincount(digits().get("train").labels)
    for split in splits:
        share = len(split) / 1797
        counts = np.bincount(split.labels, minlength=10)
        # Every class is represented in proportion, within one image of rounding.
        assert np.all(np.abs(counts - total * share) <= 1.5), counts
    # No image is in two splits: rows of all splits together are as unique as the source.
    rows = np.concatenate([s.images.reshape(len(s), -1) for s in splits])
    source = digits()["train"].images.reshape(1797, -1)
    assert len(np.unique(rows, axis=0)) == len(np.unique(source, axis=0))


def test_split_is_reproducible_and_follows_the_seed():
    raw = digits()
    a, b = prepare(raw, 0.15, 0.2, seed=0), prepare(raw, 0.15, 0.2, seed=0)
    c = prepare(raw, 0.15, 0.2, seed=1)
    assert np.array_equal(a.test.images, b.test.images)
    assert not np.array_equal(a.test.images, c.test.images)
    # And across machines and releases (numpy's PCG64 stream is stable by its policy): seed 0's test split, pinned.
    assert hashlib.sha256(a.test.images.tobytes()).hexdigest()[:16] == "b59f82638b80219a"


def test_statistics_come_from_the_training_split_only():
    images, labels = random_images(400, (3, 4, 4), classes=4)
    test_images, test_labels = random_images(100, (3, 4, 4), classes=4, seed=1)
    test_images[:] = 255  # a test split far from the training data must not move the statistics
    raw = {"train": ImageSet(images, labels, ("a", "b", "c", "d")),
           "test": ImageSet(test_images, test_labels, ("a", "b", "c", "d"))}
    prepared = prepare(raw, val_fraction=0.25, test_fraction=0.2, seed=0)
    assert len(prepared.test) == 100  # the source's own test split is kept whole
    train = prepared.train.images.astype(np.float64) / 255
    np.testing.assert_allclose(prepared.mean, train.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(prepared.std, train.std(axis=(0, 2, 3)), atol=1e-12)


def test_channel_stats_match_numpy_per_channel():
    images, _ = random_images(50, (3, 5, 7), classes=2)
    images[:, 1] //= 4  # give each channel its own distribution
    mean, std = channel_stats(images)
    as_float = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, as_float.mean(axis=(0, 2, 3)), atol=1e-12)
    np.testing.assert_allclose(std, as_float.std(axis=(0, 2, 3)), atol=1e-12)


def test_prepared_data_round_trips_through_files(tmp_path, digits_prepared):
    save_prepared(digits_prepared, tmp_path / "prepared")
    loaded = load_prepared(tmp_path / "prepared")
    assert loaded.class_names == digits_prepared.class_names
    assert loaded.class_labels == digits_prepared.class_labels == tuple(range(10))
    assert loaded.mean == digits_prepared.mean and loaded.std == digits_prepared.std
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(loaded, split).images, getattr(digits_prepared, split).images)
        assert np.array_equal(getattr(loaded, split).labels, getattr(digits_prepared, split).labels)
    assert loaded.train.images.dtype == np.uint8


def test_bad_fraction_names_the_setting():
    with pytest.raises(InvalidSetting, match="val_fraction: must be a fraction between 0 and 1, got 1.5"):
        prepare(digits(), val_fraction=1.5, test_fraction=0.2, seed=0)
    for seed in (-1, True):  # numpy's own ValueError for -1 was a traceback; true was seed 1
        with pytest.raises(InvalidSetting, match=f"seed: must be a whole number >= 0, got {seed}"):
            prepare(digits(), val_fraction=0.15, test_fraction=0.2, seed=seed)


def test_missing_prepared_data_says_which_file(tmp_path):
    with pytest.raises(ImgpipeError, match=r"stats.json: not found; run the stage that writes it"):
        load_prepared(tmp_path)


def test_class_subset_by_index_or_name_is_relabelled_in_order():
    raw = digits()
    by_index = prepare(raw, 0.15, 0.2, seed=0, classes=[7, 3])
    by_name = prepare(raw, 0.15, 0.2, seed=0, classes=["7", "3"])
    assert by_index.class_names == ("7", "3") == by_name.class_names
    assert by_index.class_labels == (7, 3) == by_name.class_labels
    assert np.array_equal(by_index.train.images, by_name.train.images)
    source = raw["train"]
    sevens = source.images[source.labels == 7]
    kept = np.concatenate([by_index.train.images, by_index.val.images, by_index.test.images])
    labels = np.concatenate([by_index.train.labels, by_index.val.labels, by_index.test.labels])
    assert len(kept) == np.isin(source.labels, [3, 7]).sum()
    assert sorted(map(bytes, kept[labels == 0])) == sorted(map(bytes, sevens))


@pytest.mark.parametrize("classes, message", [
    ([3, 12], "classes: no class has the label 12; the labels are 0..9"),
    (["3", "seven"], "classes: unknown class 'seven'; the classes are: 0, 1, 2"),
    ([3], "classes: must list at least two classes"),
    ([3, "3"], "classes: lists a class twice"),
])
def test_bad_class_subsets_are_named(classes, message):
    with pytest.raises(InvalidSetting, match=message):
        prepare(digits(), 0.15, 0.2, seed=0, classes=classes)


@pytest.mark.parametrize("letters_k", [1, 2])
def test_a_class_too_small_to_split_is_named_as_the_source_names_it(letters_k):
    """Sign Language MNIST's letters: K is label 10 (no J); the split sees positions 0..2, the message the letter. Two Ks
    fell to the validation carve, which blamed val_fraction for the 3 images the class needs."""
    labels = np.repeat([0, 1, 2], [20, 20, letters_k])
    images, _ = random_images(len(labels), (1, 4, 4), 3)
    raw = {"train": ImageSet(images, labels, ("A", "B", "K"), (0, 1, 10))}
    with pytest.raises(ImgpipeError) as caught:
        prepare(raw, 0.15, 0.2, seed=0)
    assert str(caught.value).startswith(f"class 'K' (label 10) has {letters_k} training image{'s' * (letters_k > 1)}: splitting "
                                        "test and val off needs 3")


def test_splits_of_two_sizes_and_a_single_class_are_refused_in_one_line():
    images, labels = random_images(20, (1, 8, 8), 2)
    small, _ = random_images(10, (1, 6, 6), 2)
    raw = {"train": ImageSet(images, labels, ("a", "b")), "test": ImageSet(small, labels[:10], ("a", "b"))}
    with pytest.raises(ImgpipeError) as caught:
        prepare(raw, 0.15, 0.2, seed=0)
    assert str(caught.value) == ("the test images are 6x6 with 1 channel but the train images 8x8 with 1 channel: every split needs "
                                 "one size (data.image_size sets it for image folders and CSVs)")
    three = {"train": ImageSet(*random_images(30, (1, 8, 8), 3), ("a", "b", "c")),
             "test": ImageSet(images[:5], np.full(5, 2), ("a", "b", "c"))}  # the source's test split: c alone
    with pytest.raises(ImgpipeError, match=r"^the test split holds no image of the classes kept \(a, b\); every split needs some"):
        prepare(three, 0.15, 0.2, seed=0, classes=["a", "b"])
    with pytest.raises(ImgpipeError, match=r"^the data has a single class \('a'\): a classifier needs two or more$"):
        prepare({"train": ImageSet(images, np.zeros(20, dtype=np.int64), ("a",))}, 0.15, 0.2, seed=0)


def test_data_card_counts_every_split_and_flags_thin_classes():
    images, labels = random_images(200, (1, 4, 4), classes=2)
    labels[:8] = 2  # a third class with 8 images: about one in val and two in test
    raw = {"train": ImageSet(images, labels, ("a", "b", "rare"))}
    prepared = prepare(raw, 0.15, 0.2, seed=0)
    card = data_card(prepared)
    assert card["image_size"] == [4, 4] and card["channels"] == 1
    for split in ("train", "val", "test"):  # counted here from the labels, not by the function the card uses
        labels_of = getattr(prepared, split).labels
        assert card["splits"][split]["per_class"] == {name: int((labels_of == i).sum()) for i, name in enumerate(("a", "b", "rare"))}
        assert card["splits"][split]["images"] == len(labels_of)
    assert sum(card["splits"][split]["per_class"]["rare"] for split in ("train", "val", "test")) == 8
    assert any(flag.startswith("val: class 'rare' has only") for flag in card["flagged"])
    assert not any("'a'" in flag for flag in card["flagged"])


def test_names_without_labels_go_by_name_after_a_round_trip(tmp_path):
    """An image folder's classes have names only; numbers in data.classes then mean names."""
    images, labels = random_images(40, (1, 2, 2), classes=4)
    save_splits({"train": ImageSet(images, labels, ("0", "3", "7", "9"))}, tmp_path / "raw")
    loaded = load(tmp_path / "raw", "train")
    assert loaded.class_names == ("0", "3", "7", "9") and loaded.class_labels is None
    assert isinstance(loaded.images, np.memmap) and np.array_equal(loaded.images, images) and np.array_equal(loaded.labels, labels)
    prepared = prepare({"train": loaded}, 0.25, 0.25, seed=0, classes=[3, 7])  # numbers that are names
    assert prepared.class_names == ("3", "7") and len(prepared.train) + len(prepared.val) + len(prepared.test) == 20


def test_chunked_statistics_equal_the_exact_ones(monkeypatch):
    images, _ = random_images(50, (3, 5, 7), classes=2)
    monkeypatch.setattr(imageset, "CHUNK_BYTES", 3 * 5 * 7 * 4)  # 4 images a chunk, the last one short
    assert list(imageset.chunks(50, (3, 5, 7)))[-1] == slice(48, 50)
    mean, std = channel_stats(images)
    pixels = images.astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), rtol=0, atol=1e-15)


def test_prepare_written_a_chunk_at_a_time_equals_prepare_in_memory(tmp_path, monkeypatch):
    images, labels = random_images(120, (3, 4, 4), classes=3)
    save_splits({"train": ImageSet(images, labels, ("a", "b", "c"))}, tmp_path / "raw")
    raw = load_splits(tmp_path / "raw")  # memory-mapped
    in_memory = prepare(raw, 0.2, 0.25, seed=3, classes=["c", "a"])
    monkeypatch.setattr(imageset, "CHUNK_BYTES", 3 * 4 * 4 * 7)  # 7 images a chunk
    written = prepare_into(raw, tmp_path / "prepared", 0.2, 0.25, seed=3, classes=["c", "a"])
    for split in ("train", "val", "test"):
        assert isinstance(getattr(written, split).images, np.memmap)
        assert np.array_equal(getattr(written, split).images, getattr(in_memory, split).images)
        assert np.array_equal(getattr(written, split).labels, getattr(in_memory, split).labels)
    assert (written.mean, written.std, written.class_names) == (in_memory.mean, in_memory.std, ("c", "a"))
    assert written.fingerprint == in_memory.fingerprint  # counted while writing, read from stats.json
    assert load_prepared(tmp_path / "prepared").known_fingerprint == in_memory.fingerprint

def test_listed_images_leave_the_training_split_only(tmp_path):
    """data.exclude: ids name raw images whatever the split settings; validation and test stay as they were, so the
    run before and the run after are scored on the same images."""
    from imgpipe.data.prepare import read_excluded
    from imgpipe.data.prepared import image_ids

    raw = digits_source(DataConfig()).splits
    before = prepare_into(raw, tmp_path / "before", 0.15, 0.2, seed=0)
    ids = {split: image_ids(tmp_path / "before", split) for split in ("train", "val", "test")}
    assert len(set(np.concatenate(list(ids.values())))) == 1797  # every image once
    listed = list(ids["train"][:5]) + [ids["test"][0]]  # a test image listed stays in test
    (tmp_path / "issues.csv").write_text("id,split,given\n" + "".join(f"{i},x,y\n" for i in listed))
    exclude = read_excluded(tmp_path / "issues.csv")
    after = prepare_into(raw, tmp_path / "after", 0.15, 0.2, seed=0, exclude=exclude)
    assert len(after.train) == len(before.train) - 5 and after.excluded == 5
    assert set(image_ids(tmp_path / "after", "train")) == set(ids["train"][5:])
    for split in ("val", "test"):
        assert np.array_equal(getattr(after, split).images, getattr(before, split).images)
        assert np.array_equal(image_ids(tmp_path / "after", split), ids[split])
    (tmp_path / "list.txt").write_text("# reviewed\ntrain:3\n\ntrain:7  # a 7 labelled 1\n")
    assert read_excluded(tmp_path / "list.txt") == {"train:3", "train:7"}
    # The CSV as a spreadsheet saves it: a byte-order mark, quoted cells, CRLF; or its id column alone.
    (tmp_path / "saved.csv").write_bytes('\ufeffid,split,given\r\n"train:3",train,"7"\r\ntrain:7,train,1\r\n'.encode())
    assert read_excluded(tmp_path / "saved.csv") == {"train:3", "train:7"}
    (tmp_path / "ids.csv").write_text("id\ntrain:3\ntrain:0007\n")  # a spreadsheet's zero-padded number too
    assert read_excluded(tmp_path / "ids.csv") == {"train:3", "train:7"}
    every_three = {f"train:{i}" for i in range(len(raw["train"])) if raw["train"].labels[i] == 3}
    with pytest.raises(InvalidSetting, match=r"^exclude: leaves class '3' no training image"):
        prepare_into(raw, tmp_path / "other", 0.15, 0.2, seed=0, exclude=every_three)
    (tmp_path / "unicode.txt").write_text("id\ntrain:3\n", encoding="utf-16")  # a spreadsheet's "Unicode text"
    with pytest.raises(ImgpipeError, match=r"unicode.txt: the list of images to exclude is not UTF-8 text"):
        read_excluded(tmp_path / "unicode.txt")
    with pytest.raises(InvalidSetting, match=r"^exclude: train:1797 names no image of this data \(its raw splits: train:0..1796\)"):
        prepare_into(raw, tmp_path / "other", 0.15, 0.2, seed=0, exclude={"train:3", "train:1797"})
    with pytest.raises(InvalidSetting, match=r"^exclude: val:5 names no image"):  # the digits have no raw val split
        prepare_into(raw, tmp_path / "other", 0.15, 0.2, seed=0, exclude={"val:5"})
    assert not (tmp_path / "other").exists()
    (tmp_path / "bad.txt").write_text("train:3\nseven\n")
    with pytest.raises(InvalidSetting, match=r"bad.txt: .seven. is not an image id \(such as train:1234\)"):
        read_excluded(tmp_path / "bad.txt")


def test_a_class_too_small_for_its_splits_is_named_with_what_it_needs():
    images = np.zeros((102, 1, 2, 2), np.uint8)
    raw = {"train": ImageSet(images, np.array([0, 0] + [1] * 100), ("a", "b"))}
    with pytest.raises(ImgpipeError, match=r"^class 'a' has 2 training images: splitting test and val off needs 3 \(one for each "
                                           r"split\); add images, or leave it out with data.classes$"):
        prepare(raw, 0.15, 0.2, seed=0)
    assert len(prepare({"train": ImageSet(images, np.array([0, 0, 0] + [1] * 99), ("a", "b"))}, 0.15, 0.2, seed=0).test) > 0


def test_the_order_data_classes_lists_them_in_changes_the_labels_not_the_split():
    """[3, 7] and [7, 3] hold out the same images: two experiments differing in that order score on one test split."""
    from imgpipe.data.prepare import plan_splits

    raw = digits_source(DataConfig()).splits
    plans = [plan_splits(raw, 0.15, 0.2, 0, classes)[0] for classes in ([3, 7], [7, 3])]
    for split in ("train", "val", "test"):
        assert sorted(plans[0][split].indices) == sorted(plans[1][split].indices), split
    first, second = (dict(zip(plan["test"].indices, plan["test"].labels)) for plan in plans)
    assert all(second[index] == 1 - label for index, label in first.items())  # relabelled in the order listed


def test_a_split_keeps_every_class_on_both_sides_and_names_a_class_it_cannot_split():
    labels = np.repeat([0, 1, 2], [200, 30, 2])  # the last class: one image each side, whatever the fraction
    kept, held = stratified_split(labels, 0.1, seed=0)
    assert len(np.intersect1d(kept, held)) == 0 and len(kept) + len(held) == len(labels)
    # 24 of 232 held out: 20.7, 3.1 and 0.2 by size, the leftover image to the largest remainder, the last class its one
    assert list(np.bincount(labels[held])) == [21, 3, 1] and list(np.bincount(labels[kept])) == [179, 27, 1]
    with pytest.raises(InvalidSetting, match="cannot hold out 0.25 of 4 images: class 7 has 1 image there"):
        stratified_split(np.array([0, 0, 0, 7]), 0.25, seed=0)
    # 0.55 x 100 is 55.000000000000007 in floating point: 55 held out, not 56.
    assert len(stratified_split(np.repeat([0, 1], 50), 0.55, seed=0)[1]) == 55
