import copy
import os
import time
from dataclasses import replace

import pytest
import torch

from imgpipe.config import TrainConfig
from imgpipe.data.prepared import load_prepared, save_prepared
from imgpipe.errors import ImgpipeError
from imgpipe.evaluation.evaluate import evaluate
from imgpipe.lineage import code_version
from imgpipe.models.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.training import loop
from imgpipe.training.batches import ResidentSplit, StreamedSplit
from imgpipe.training.loop import augment, make_optimizer, on_device, train
from imgpipe.training.muon import ConvMuon, orthogonalized

FAST = TrainConfig(epochs=3, batch_size=64, lr=0.01, device="cpu")


@pytest.mark.parametrize("model, settings", [("linear", {}), ("mlp", {"hidden": [32]}), ("cnn", {"channels": [8]})])
def test_every_model_learns_the_digits(digits_prepared, model, settings):
    result = train(model, settings, digits_prepared, FAST)
    assert len(result.history) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_accuracy"] > 0.8  # chance is 0.1
    assert result.seconds > 0 and result.images_per_second > 0


def measured(history: list[dict]) -> list[dict]:
    """The history without its wall-clock seconds, which no two runs share."""
    return [{k: v for k, v in row.items() if k not in ("seconds", "train_seconds")} for row in history]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(wa, wb) for wa, wb in zip(a.state_dict().values(), b.state_dict().values()))


def test_same_settings_give_identical_runs_on_cpu(digits_prepared):
    config = replace(FAST, deterministic=True, crop_padding=1, schedule="onecycle")
    a = train("cnn", {"channels": [4], "dropout": 0.2}, digits_prepared, config)
    b = train("cnn", {"channels": [4], "dropout": 0.2}, digits_prepared, config)
    assert measured(a.history) == measured(b.history) and same_weights(a.model, b.model)
    c = train("cnn", {"channels": [4], "dropout": 0.2}, digits_prepared, replace(config, seed=1))
    assert measured(c.history) != measured(a.history)


@pytest.mark.parametrize("model, settings, workers", [("cnn", {"channels": [4], "dropout": 0.2}, 2), ("mlp", {"hidden": [16]}, 0)])
def test_resident_and_streamed_batches_train_the_same_weights(tmp_path, digits_prepared, model, settings, workers):
    save_prepared(digits_prepared, tmp_path / "prepared")
    data = load_prepared(tmp_path / "prepared")  # memory-mapped, as the train stage reads it
    config = replace(FAST, epochs=2, batch_size=50, deterministic=True, crop_padding=1, flip=True, stream_workers=workers)
    resident = train(model, settings, data, replace(config, data_on_device=True))
    streamed = train(model, settings, data, replace(config, data_on_device=False))
    assert resident.data_on_device and not streamed.data_on_device
    assert measured(resident.history) == measured(streamed.history) and same_weights(resident.model, streamed.model)
    assert resident.summary()["data_on_device"] is True


def test_an_empty_share_of_a_split_scores_alike_resident_and_streamed(digits_prepared):
    """A rank whose share of the validation split is empty (fewer images than ranks) all-reduces figures of the other
    ranks' shape: both kinds of split give scores for no image as (0, classes)."""
    model = train("cnn", {"channels": [4]}, digits_prepared, replace(FAST, epochs=1)).model
    cpu = torch.device("cpu")
    for split in (ResidentSplit(digits_prepared.val, cpu), StreamedSplit(digits_prepared.val, cpu, workers=0)):
        assert split.logits(model, slice(0, 0)).shape == (0, 10), type(split).__name__
        assert split.logits(model, slice(0, 3)).shape == (3, 10)


def test_a_last_batch_of_one_image_joins_the_one_before(digits_prepared):
    """The speedrun CNN's last block works at 1x1 on the 8x8 digits, where batch norm cannot normalize one image: a
    last batch (or batch-norm sample) of one joins the one before, and one-cycle's step count follows."""
    assert len(digits_prepared.train) % 20 == 1
    config = replace(FAST, epochs=2, batch_size=20, schedule="onecycle", bn_images=41)  # the sample: 20, 20, 1
    result = train("speedrun_cnn", {"channels": [4, 8, 8]}, digits_prepared, config)
    assert len(result.history) == 2
    generator = torch.Generator().manual_seed(0)
    sizes = [len(index) for index in loop.batches(len(digits_prepared.train), 20, generator)]
    assert sizes[-1] == 21 and sum(sizes) == len(digits_prepared.train) == 20 * (len(sizes) - 1) + 21
    assert len(sizes) == loop.batch_count(len(digits_prepared.train), 20)
    for count, world, expected in ((8, 1, [3, 3, 2]), (8, 2, [3, 5]), (10, 2, [3, 3, 4]), (2, 1, [2])):  # 2 ranks: 1 each of 2
        assert [len(part) for part in loop.in_batches(torch.arange(count), 3, world)] == expected, (count, world)
        assert loop.batch_count(count, 3, world) == len(expected)


def test_auto_keeps_the_splits_on_the_device_only_when_they_fit(digits_prepared):
    size = digits_prepared.train.images.nbytes + digits_prepared.val.images.nbytes  # about 90 KB
    assert on_device(replace(FAST, data_on_device="auto", resident_limit_mb=1), size, torch.device("cpu"))
    assert not on_device(replace(FAST, data_on_device="auto", resident_limit_mb=0), size, torch.device("cpu"))
    assert not on_device(replace(FAST, data_on_device=False, resident_limit_mb=1), size, torch.device("cpu"))
    fitted = train("centroid", {}, digits_prepared, replace(FAST, data_on_device=False))
    assert fitted.data_on_device  # fitted in one pass over the whole split


@pytest.mark.parametrize("model, settings, recipe", [
    ("mlp", {"hidden": [16], "dropout": 0.1}, {}),
    # re-estimated statistics; Muon's and SGD's momenta; cutout's draws
    ("cnn", {"channels": [4], "batch_norm": True, "dropout": 0.1}, {"optimizer": "muon", "lr": 0.05, "cutout": 3}),
])
def test_training_killed_midway_resumes_to_the_same_result(tmp_path, digits_prepared, model, settings, recipe):
    config = replace(FAST, epochs=4, deterministic=True, schedule="cosine", flip=True, **recipe)
    whole = train(model, settings, digits_prepared, config)
    resume = tmp_path / "resume.pt"

    def kill_after_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(model, settings, digits_prepared, config, resume=resume, on_epoch=kill_after_epoch_2)
    assert resume.exists()
    epochs_run = []
    resumed = train(model, settings, digits_prepared, config, resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [3, 4]  # it continued after the last finished epoch
    assert measured(resumed.history) == measured(whole.history) and same_weights(resumed.model, whole.model)
    # The finished training's state stays until the caller has saved the result: run again, it trains nothing.
    epochs_run.clear()
    again = train(model, settings, digits_prepared, config, resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [] and measured(again.history) == measured(whole.history) and same_weights(again.model, whole.model)
    assert again.best_epoch == whole.best_epoch


def test_early_stopping_is_remembered_by_the_finished_state(tmp_path, digits_prepared):
    config = replace(FAST, epochs=30, patience=1, lr=0.5)  # too high a rate: the val loss soon stops falling
    resume = tmp_path / "resume.pt"
    first = train("linear", {}, digits_prepared, config, resume=resume)
    assert first.stopped_early and len(first.history) < 30
    epochs_run = []
    again = train("linear", {}, digits_prepared, config, resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [] and again.stopped_early and len(again.history) == len(first.history)


def interrupted_training(resume, data, config=FAST) -> None:
    """A linear training stopped after its first epoch, leaving its state in `resume`."""
    with pytest.raises(KeyboardInterrupt):
        train("linear", {}, data, config, resume=resume, on_epoch=lambda row: (_ for _ in ()).throw(KeyboardInterrupt))
    assert resume.exists()


def test_state_from_other_settings_is_set_aside_saying_why(tmp_path, digits_prepared, capsys):
    resume = tmp_path / "linear.pt"
    interrupted_training(resume, digits_prepared)
    epochs_run = []
    train("linear", {}, digits_prepared, replace(FAST, lr=0.02), resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [1, 2, 3]
    assert (f"linear: not resuming from {resume}: it was saved with other settings; moved to linear.set-aside.pt, "
            "training from epoch 1") in capsys.readouterr().out
    assert (tmp_path / "linear.set-aside.pt").exists()
    finished = torch.load(resume, weights_only=True)["state"]  # now the new training's, finished, until its caller saves it
    assert (finished["epoch"], finished["finished"]) == (3, True)


def test_state_resumes_whatever_settings_of_how_training_runs_changed(tmp_path, digits_prepared, monkeypatch):
    """A rerun after a failure with more restarts allowed, another thread count or streamed batches computes the same
    training: it resumes. precision: auto as another machine resolves it (fp32 where this one has bf16) does not."""
    resume = tmp_path / "linear.pt"
    interrupted_training(resume, digits_prepared)
    epochs_run = []
    rerun = replace(FAST, max_restarts=6, threads=2, data_on_device=False, stream_workers=0, resident_limit_mb=8)
    train("linear", {}, digits_prepared, rerun, resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [2, 3]
    resume.unlink()  # that training's finished state
    interrupted_training(resume, digits_prepared)  # precision: auto, resolved on this machine
    native = loop.has_native_bf16(torch.device("cpu"))
    monkeypatch.setattr(loop, "has_native_bf16", lambda device: not native)  # the other machine
    epochs_run.clear()
    train("linear", {}, digits_prepared, FAST, resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [1, 2, 3]


@pytest.mark.parametrize("part, why", [("code", "other training code"), ("device", "another kind of device"), ("data", "other data"),
                                       ("steps", "another number of steps an epoch (another process count)")])
def test_state_saved_by_other_code_data_or_device_is_never_resumed(tmp_path, digits_prepared, capsys, part, why):
    """Nor one saved by another process count whose epochs took another number of steps (the last small batch merged
    on one, not the other: 1,030 images at batch 64 take 17 steps on 2 ranks, 16 on 4): the saved one-cycle schedule
    would run out of steps in the last epoch."""
    assert loop.batch_count(1030, 64, 2) == 17 and loop.batch_count(1030, 64, 4) == 16
    resume = tmp_path / "linear.pt"
    interrupted_training(resume, digits_prepared)
    state = torch.load(resume, weights_only=True)
    assert state["key"]["code"] == code_version("imgpipe.training.loop") and state["key"]["device"] == "cpu"
    assert state["key"]["steps"] == str(loop.batch_count(len(digits_prepared.train), FAST.batch_size, 1))
    state["key"][part] = "cuda" if part == "device" else "0123456789abcdef"  # as another machine or commit saved it
    torch.save(state, resume)
    epochs_run = []
    train("linear", {}, digits_prepared, FAST, resume=resume, on_epoch=lambda row: epochs_run.append(row["epoch"]))
    assert epochs_run == [1, 2, 3]
    lines = [line for line in capsys.readouterr().out.splitlines() if "not resuming" in line]
    assert lines == [f"linear: not resuming from {resume}: it was saved with {why}; moved to linear.set-aside.pt, training from epoch 1"]


@pytest.mark.parametrize("content", [b"cut sh", "old"])
def test_unreadable_or_old_state_is_set_aside_not_a_crash(tmp_path, digits_prepared, capsys, content):
    resume = tmp_path / "linear.pt"
    if content == "old":  # the format before resume keys: a single "fingerprint" string
        interrupted_training(resume, digits_prepared)
        state = torch.load(resume, weights_only=True)
        state["fingerprint"] = state.pop("key")["settings"]
        torch.save(state, resume)
    else:
        resume.write_bytes(content)
    result = train("linear", {}, digits_prepared, FAST, resume=resume)
    assert len(result.history) == 3
    why = "it was saved by an older imgpipe" if content == "old" else "it cannot be read ("
    assert f"linear: not resuming from {resume}: {why}" in capsys.readouterr().out


def test_early_stopping_watches_val_loss_and_keeps_the_most_accurate_weights(digits_prepared):
    # A learning rate far too high makes the val loss stop improving quickly.
    config = replace(FAST, epochs=30, lr=5.0, optimizer="sgd", schedule="constant", patience=2)
    result = train("mlp", {"hidden": [32]}, digits_prepared, config)
    lowest_loss = min(result.history, key=lambda row: row["val_loss"])
    assert result.stopped_early and len(result.history) == lowest_loss["epoch"] + 2 < 30
    best = max(result.history, key=lambda row: (row["val_accuracy"], -row["val_loss"]))
    assert best["epoch"] == result.best_epoch
    # The summary (the metrics file, MLflow's figures) is the kept epoch's, here not the last one's.
    assert result.summary()["val_accuracy"] == best["val_accuracy"] != result.history[-1]["val_accuracy"]
    assert result.summary()["val_loss"] == best["val_loss"] and result.summary()["best_epoch"] == best["epoch"]
    val = evaluate(result.model, digits_prepared.val, torch.device("cpu")).metrics
    assert val["accuracy"] == pytest.approx(best["val_accuracy"]) and val["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_every_optimizer_and_schedule_takes_steps(digits_prepared, optimizer, schedule):
    config = TrainConfig(epochs=2, batch_size=256, optimizer=optimizer, schedule=schedule, lr=0.05,
                         nesterov=True, weight_decay=1e-4, label_smoothing=0.1, device="cpu")
    result = train("linear", {}, digits_prepared, config)
    assert result.history[-1]["train_loss"] < 2.2 and result.history[-1]["val_accuracy"] > 0.5


@pytest.mark.parametrize("optimizer, kind", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                             ("adamw", torch.optim.AdamW), ("muon", ConvMuon)])
@pytest.mark.parametrize("momentum", [0.8, 0.0])
def test_each_optimizer_is_the_one_named_with_its_settings(optimizer, kind, momentum):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10))
    config = TrainConfig(optimizer=optimizer, lr=0.05, momentum=momentum, nesterov=True, weight_decay=1e-3, device="cpu")
    built = make_optimizer(config, net.parameters())
    assert type(built) is kind and sum(len(group["params"]) for group in built.param_groups) == 4
    for group in built.param_groups:
        assert (group["lr"], group["weight_decay"]) == (0.05, 1e-3)
        if optimizer in ("sgd", "muon"):
            assert group["momentum"] == momentum
        if optimizer == "sgd":  # Nesterov needs momentum: without it, plain SGD rather than torch's refusal
            assert group["nesterov"] is (momentum > 0)


def test_threads_0_is_pytorchs_own_choice_even_after_a_training_that_set_another(digits_prepared):
    other = loop.OWN_THREADS + 1
    try:
        train("linear", {}, digits_prepared, replace(FAST, epochs=1, threads=other))
        assert torch.get_num_threads() == other
        train("linear", {}, digits_prepared, replace(FAST, epochs=1, threads=0))
        assert torch.get_num_threads() == loop.OWN_THREADS
    finally:
        torch.set_num_threads(loop.OWN_THREADS)


def test_label_smoothing_reaches_every_training_step(digits_prepared, monkeypatch):
    smoothing = []  # each loss's label_smoothing: the steps' and validation's
    cross_entropy = torch.nn.functional.cross_entropy

    def recorded(*args, **kwargs):
        smoothing.append(kwargs.get("label_smoothing", 0.0))
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recorded)
    train("linear", {}, digits_prepared, replace(FAST, epochs=1, batch_size=256, label_smoothing=0.1))
    assert smoothing.count(0.1) == -(-len(digits_prepared.train) // 256)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_each_schedule_sets_the_learning_rate_of_every_step_and_keeps_the_momentum(digits_prepared, monkeypatch, schedule):
    rates, momenta = [], []  # the learning rate and momentum each of the optimizer's steps took
    step = torch.optim.SGD.step

    def recorded(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        momenta.append(self.param_groups[0]["momentum"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recorded)
    config = TrainConfig(epochs=2, batch_size=256, optimizer="sgd", schedule=schedule, lr=0.05, momentum=0.8, device="cpu")
    train("linear", {}, digits_prepared, config)
    assert len(rates) == 2 * -(-len(digits_prepared.train) // 256)
    assert momenta == [0.8] * len(rates)  # train.momentum, whatever the schedule (torch's one-cycle would cycle it)
    peak = max(range(len(rates)), key=rates.__getitem__)
    if schedule == "constant":
        assert rates == [0.05] * len(rates)
    elif schedule == "cosine":  # from the rate down to about zero
        assert rates[0] == 0.05 and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] < 0.05 / 20
    else:  # up from a 25th of the rate to it, then down far below where it started
        assert rates[0] == pytest.approx(0.05 / 25) and rates[peak] == pytest.approx(0.05) and 0 < peak < len(rates) / 2
        assert rates[-1] < rates[0] / 100


def test_augmentation_flips_about_half_and_crops_windows_of_the_padded_images():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 4, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    flipped = augment(images, crop_padding=0, flip=True, generator=generator)
    assert flipped.shape == images.shape and flipped.dtype == torch.uint8
    mirrored = [torch.equal(after, before.flip(-1)) for before, after in zip(images, flipped)]
    assert all(m or torch.equal(after, before) for m, before, after in zip(mirrored, images, flipped))
    assert 16 < sum(mirrored) < 48  # each image is mirrored with probability 1/2
    cropped = augment(images, crop_padding=1, flip=False, generator=generator)
    assert cropped.shape == images.shape
    padded = torch.nn.functional.pad(images, (1, 1, 1, 1))
    offsets = []  # each crop is a window of its padded image: which one
    for before, after in zip(padded, cropped):
        offsets += [(r, c) for r in range(3) for c in range(3) if torch.equal(after, before[:, r:r + 4, c:c + 5])]
    assert len(offsets) == len(images)
    assert offsets.count((1, 1)) < 24 and len(set(offsets)) > 4  # the image itself for about one in nine


def test_cutout_blanks_one_square_of_the_size_asked_in_about_half_the_images():
    images = torch.full((200, 1, 10, 12), 255, dtype=torch.uint8)
    cut = augment(images, crop_padding=0, flip=False, generator=torch.Generator().manual_seed(0), cutout=4)
    assert cut.dtype == torch.uint8 and set(cut.unique().tolist()) <= {0, 255}
    blanked = 0
    for image in cut[:, 0]:
        rows, cols = (image == 0).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        blanked += 1
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert len(rows) == (bottom - top) * (right - left)  # one filled rectangle...
        assert bottom - top == 4 or top == 0 or bottom == 10  # ...of 4x4 pixels, less what the edges clip
        assert right - left == 4 or left == 0 or right == 12
    assert 60 < blanked < 140


def test_a_ranks_rows_are_augmented_as_the_whole_batchs_are():
    """Data-parallel: each rank augments its share of the global batch, drawing the whole batch's numbers."""
    images = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    whole = augment(images, 1, True, torch.Generator().manual_seed(0), cutout=3)
    share = augment(images[5:9], 1, True, torch.Generator().manual_seed(0), share=slice(5, 9), batch=20, cutout=3)
    assert torch.equal(share, whole[5:9])
    assert not torch.equal(whole, augment(images, 1, True, torch.Generator().manual_seed(0)))  # the cutout did something


def test_muon_steps_filters_by_their_orthogonalized_momentum_and_the_rest_by_nesterov_sgd():
    torch.manual_seed(0)
    # One input channel: the filters are a tall matrix (16 x 9), whose steps are scaled up by sqrt(16 / 9).
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.Flatten(), torch.nn.LazyLinear(4))
    images, labels = torch.randn(8, 1, 6, 6), torch.randint(0, 4, (8,))
    net(images)
    reference = copy.deepcopy(net)
    muon = ConvMuon(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    rest = [p for p in reference.parameters() if p.ndim != 4]
    sgd = torch.optim.SGD(rest, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=False)
    for step in range(3):
        filters = net[0].weight.detach().clone()
        for model, optimizer in ((net, muon), (reference, sgd)):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
        for mine, theirs in zip([p for p in net.parameters() if p.ndim != 4], rest):
            assert torch.equal(mine, theirs)  # the rest: exactly SGD's steps
        with torch.no_grad():
            reference[0].weight.copy_(net[0].weight)  # the same filters for the next step's gradients
        # The filters: moved along a matrix whose singular values are all near 1, times the step size and the scale
        moved = (filters - net[0].weight.detach()).reshape(16, -1) / (0.1 * (16 / 9) ** 0.5)
        singular = torch.linalg.svdvals(moved)
        assert singular.min() > 0.6 and singular.max() < 1.2 and 0.8 < singular.mean() < 1.05, (step, singular)  # unscaled: mean 0.69
    gradient = torch.linalg.svdvals(net[0].weight.grad.reshape(16, -1))
    assert gradient.max() / gradient.min() > 3


def test_muon_filters_take_nesterov_momentum_0_6_and_no_weight_decay():
    torch.manual_seed(0)
    filters = torch.nn.Parameter(torch.randn(4, 2, 3, 3))  # a wide matrix (4 x 18): no scale
    muon = ConvMuon([filters], lr=0.1, momentum=0.9, weight_decay=0.5)  # train.momentum and weight decay: the rest's
    start, gradients = filters.detach().clone(), [torch.randn(4, 2, 3, 3) for _ in range(2)]
    for gradient in gradients:
        filters.grad = gradient.clone()
        muon.step()
    first, second = gradients
    buffer = 0.6 * first + second  # the momentum after two steps
    steps = [orthogonalized(update.reshape(4, -1)).reshape(4, 2, 3, 3) for update in (first + 0.6 * first, second + 0.6 * buffer)]
    torch.testing.assert_close(filters.detach(), start - 0.1 * (steps[0] + steps[1]))


def test_centroid_predicts_the_nearest_class_mean(digits_prepared):
    result = train("centroid", {"distance": "l1"}, digits_prepared, FAST)
    assert len(result.history) == 1 and result.history[0]["val_accuracy"] > 0.85
    centroids = result.model.net.centroids
    train_x = result.model.normalize(torch.from_numpy(digits_prepared.train.images)).flatten(1)
    labels = torch.from_numpy(digits_prepared.train.labels)
    assert torch.allclose(centroids[3], train_x[labels == 3].mean(0), atol=1e-5)
    test_x = torch.from_numpy(digits_prepared.test.images)
    nearest = torch.cdist(result.model.normalize(test_x).flatten(1), centroids, p=1).argmin(1)
    with torch.no_grad():
        assert torch.equal(result.model(test_x).argmax(1), nearest)


def test_checkpoint_alone_rebuilds_the_model(tmp_path, digits_prepared):
    result = train("mlp", {"hidden": [16]}, digits_prepared, FAST)
    path = tmp_path / "mlp.pt"
    save_checkpoint(path, result.model, model_name="mlp", model_settings={"hidden": [16]},
                    image_shape=digits_prepared.image_shape, class_names=digits_prepared.class_names, config=FAST)
    model, meta = load_checkpoint(path)
    assert meta["class_names"] == list("0123456789") and meta["image_shape"] == [1, 8, 8]
    assert meta["mean"] == pytest.approx(digits_prepared.mean) and meta["train_config"]["epochs"] == 3
    images = torch.from_numpy(digits_prepared.test.images)
    result.model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), result.model(images))


def test_a_foreign_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ImgpipeError, match="model.pt: not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("change, reason", [
    (lambda c: c["model_settings"].update(width=3), "InvalidSetting: width: not a setting of model 'mlp'"),
    (lambda c: c["state_dict"].pop("layers.1.weight"), "RuntimeError: Error(s) in loading state_dict"),
    (lambda c: c.pop("mean"), "KeyError: no 'mean'")])
def test_a_checkpoint_of_another_version_is_refused_naming_the_file(tmp_path, digits_prepared, change, reason):
    """Readable, in imgpipe's format, but from another imgpipe or torchvision: one line naming the file, not a
    traceback from deep in torch."""
    result = train("mlp", {"hidden": [16]}, digits_prepared, replace(FAST, epochs=1))
    path = tmp_path / "mlp.pt"
    save_checkpoint(path, result.model, model_name="mlp", model_settings={"hidden": [16]},
                    image_shape=digits_prepared.image_shape, class_names=digits_prepared.class_names, config=FAST)
    checkpoint = torch.load(path, weights_only=True)
    change(checkpoint)
    torch.save(checkpoint, path)
    with pytest.raises(ImgpipeError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: saved by another version of imgpipe or of its model ({reason}")
    assert "\n" not in str(caught.value)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_with_dropout_resumes_to_the_same_result(tmp_path, digits_prepared):
    """Dropout draws from the CUDA generator: its state must be saved and restored too."""
    config = TrainConfig(epochs=3, device="cuda", deterministic=True)
    settings = {"hidden": [32], "dropout": 0.5}
    whole = train("mlp", settings, digits_prepared, config)
    resume = tmp_path / "mlp.pt"
    with pytest.raises(KeyboardInterrupt):
        train("mlp", settings, digits_prepared, config, resume=resume, on_epoch=lambda row: (_ for _ in ()).throw(KeyboardInterrupt))
    torch.cuda.manual_seed(12345)  # what a new process would start from is not what the run had reached
    ran = []
    resumed = train("mlp", settings, digits_prepared, config, resume=resume, on_epoch=lambda row: ran.append(row["epoch"]))
    assert ran == [2, 3]  # taken up after epoch 1: a run from scratch would match the whole one too
    assert measured(resumed.history) == measured(whole.history) and same_weights(resumed.model, whole.model)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_cuda(digits_prepared):
    result = train("cnn", {"channels": [8]}, digits_prepared, TrainConfig(epochs=2, device="cuda"))
    assert result.device == "cuda" and next(result.model.parameters()).is_cuda
    assert result.history[-1]["val_accuracy"] > 0.5


def test_a_run_records_the_arithmetic_and_hardware_it_trained_in_and_its_trainings_own_seconds(digits_prepared, monkeypatch):
    """Figures from two machines or precisions differ in their last digits: the run says which it was."""
    ran = []  # (dtype, channels_last) of every training convolution's output (its input may have a single channel: both)
    forward = torch.nn.Conv2d.forward

    def recorded(self, images):
        output = forward(self, images)
        ran.append((output.dtype, output.is_contiguous(memory_format=torch.channels_last))) if self.training else None
        return output

    monkeypatch.setattr(torch.nn.Conv2d, "forward", recorded)
    fp32 = train("cnn", {"channels": [4]}, digits_prepared, replace(FAST, epochs=2, precision="fp32"))
    in_fp32, ran[:] = set(ran), []
    bf16 = train("cnn", {"channels": [4]}, digits_prepared, replace(FAST, epochs=2, precision="bf16"))
    assert in_fp32 == {(torch.float32, False)} and set(ran) == {(torch.bfloat16, True)}
    assert (fp32.summary()["precision"], fp32.summary()["channels_last"]) == ("fp32", False)
    assert (bf16.summary()["precision"], bf16.summary()["channels_last"]) == ("bf16", True)
    fitted = train("centroid", {}, digits_prepared, replace(FAST, precision="bf16"))  # fitted in float32, whatever is asked
    assert (fitted.summary()["precision"], fitted.summary()["channels_last"]) == ("fp32", False)
    assert f"({os.cpu_count()} cores" in fp32.summary()["hardware"]
    for result in (fp32, bf16):  # the training alone: less than the epochs with their validation, and growing
        training, whole = [row["train_seconds"] for row in result.history], [row["seconds"] for row in result.history]
        assert 0 < training[0] < training[1] and all(t < w for t, w in zip(training, whole))


def test_the_trainings_own_seconds_count_batch_norms_statistics_and_not_the_validation(digits_prepared, monkeypatch):
    """A network with batch norm is scored with statistics re-estimated after its steps: making them is training
    (a speed comparison must count it), scoring the validation split is not. Each is slowed by a known pause."""
    import imgpipe.training.loop as loop

    def slowed(function, pause):
        def wrapper(*args, **kwargs):
            time.sleep(pause)
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(loop, "reestimate", slowed(loop.reestimate, 0.5))
    monkeypatch.setattr(loop, "_validate", slowed(loop._validate, 2.0))
    result = train("cnn", {"channels": [4], "batch_norm": True}, digits_prepared, replace(FAST, epochs=1))
    row = result.history[0]
    assert 0.5 <= row["train_seconds"] < 2.0 and row["seconds"] >= row["train_seconds"] + 2.0, row
