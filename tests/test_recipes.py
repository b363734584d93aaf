"""What the fast recipes add to training (issue #32): test-time augmentation, answering alike wherever the model
answers; a moving average of the weights, validated, kept, saved and resumed in their place; a small residual net and the
speedruns' CNN."""

from dataclasses import replace

import mlflow
import pytest
import torch

from imgpipe.config import TrainConfig
from imgpipe.evaluation.evaluate import evaluate
from imgpipe.models.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.models.inference import logits_in_chunks
from imgpipe.serving.answer import top_classes as predict
from imgpipe.serving.preprocessing import Preprocessing
from imgpipe.tracking import runs
from imgpipe.training.loop import train

FAST = TrainConfig(epochs=3, batch_size=64, lr=0.01, device="cpu", deterministic=True)
CNN = {"channels": [4], "batch_norm": True}


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(wa, wb) for wa, wb in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def saved_and_loaded(tmp_path, result, data, model_name, settings, config):
    path = tmp_path / f"{model_name}.pt"
    save_checkpoint(path, result.model, model_name=model_name, model_settings=settings, image_shape=data.image_shape,
                    class_names=data.class_names, config=config)
    return load_checkpoint(path)


def served_scores(model, meta: dict, data, experiment: str, images: torch.Tensor) -> torch.Tensor:
    """The scores of the model as the publish stage logs it to MLflow (a torch.export program) and serving loads it."""
    run_id = runs.log_training(experiment, meta["model"], training="0" * 16, params={}, curves={},
                               metrics={"val_accuracy": 0.5, "train_seconds": 1.0, "started": "2026-12-03T10:00:00+00:00"},
                               model=model, example=data.val.images[:2], tags={}, datasets=[],
                               preprocessing=Preprocessing.of({key: meta[key] for key in ("class_names", "image_shape", "background")}))
    served = mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model().network
    with torch.no_grad():
        return served(images)


def test_test_time_augmentation_answers_alike_in_evaluate_predict_and_the_served_model(
        tmp_path, digits_prepared, monkeypatch, mlflow_store, experiment):
    config = replace(FAST, epochs=1, tta=True)
    result = train("cnn", CNN, digits_prepared, config)
    loaded, meta = saved_and_loaded(tmp_path, result, digits_prepared, "cnn", CNN, config)
    assert meta["tta"] is True and loaded.tta
    images = torch.from_numpy(digits_prepared.test.images)
    with torch.no_grad():
        # By hand: the average of the image's scores and its mirror image's, then the temperature.
        normalized = loaded.normalize(images)
        by_hand = (loaded.net(normalized) + loaded.net(normalized.flip(-1))) / 2 / loaded.temperature
        scores = loaded(images)
        loaded.tta = False
        plain = loaded(images)
        loaded.tta = True
    assert torch.equal(scores, by_hand) and not torch.allclose(scores, plain, atol=1e-3)

    # evaluate and predict score through the same module: the same classes, the same confidences.
    device = torch.device("cpu")
    assert torch.equal(logits_in_chunks(loaded, digits_prepared.test.images, device), scores)
    expected = scores.argmax(1)
    assert expected.tolist() != plain.argmax(1).tolist()  # some answers change: the checks below tell the two apart
    answered = predict(loaded, digits_prepared.test.images, digits_prepared.class_names, top_k=1, device=device)
    assert answered["predicted"].tolist() == [digits_prepared.class_names[i] for i in expected.tolist()]
    assert answered["confidence"].to_numpy() == pytest.approx(scores.softmax(1).max(1).values.numpy(), abs=1e-4)
    assert evaluate(loaded, digits_prepared.test, device).metrics["accuracy"] == pytest.approx(
        float((expected.numpy() == digits_prepared.test.labels).mean()))

    # The served model: the torch.export program MLflow logs and `mlflow models serve` loads.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    served = served_scores(loaded, meta, digits_prepared, experiment, images)
    assert torch.equal(served.argmax(1), expected)
    assert torch.allclose(served, scores, atol=1e-5) and not torch.allclose(served, plain, atol=1e-3)


def test_test_time_augmentation_is_off_in_the_gradient_steps(digits_prepared):
    """The loss sees each image once, as augmentation drew it: a training with tta takes the same steps as one without
    (its validation scores differ, and so may the epoch it keeps: one epoch here, so not)."""
    with_tta = train("cnn", CNN, digits_prepared, replace(FAST, epochs=1, tta=True, bn_images=0))
    without = train("cnn", CNN, digits_prepared, replace(FAST, epochs=1, bn_images=0))
    assert with_tta.history[0]["train_loss"] == without.history[0]["train_loss"]
    assert same_weights(with_tta.model.net, without.model.net)
    assert with_tta.history[0]["val_loss"] != without.history[0]["val_loss"]


def test_the_weight_average_is_validated_kept_saved_and_resumed_bit_exactly(tmp_path, digits_prepared):
    config = replace(FAST, epochs=4, ema=0.9, flip=True)
    whole = train("cnn", CNN, digits_prepared, config)
    raw = train("cnn", CNN, digits_prepared, replace(config, ema=0.0))
    assert not same_weights(whole.model, raw.model)  # the average, not the weights the steps reached
    assert whole.history[0]["train_loss"] == raw.history[0]["train_loss"]  # ...by the same steps

    # What was validated is what was kept: the kept epoch's val figures are the saved model's.
    loaded, _ = saved_and_loaded(tmp_path, whole, digits_prepared, "cnn", CNN, config)
    assert same_weights(loaded.net, whole.model.net)
    val = evaluate(loaded, digits_prepared.val, torch.device("cpu")).metrics["accuracy"]
    assert val == whole.history[whole.best_epoch - 1]["val_accuracy"]

    # Killed after epoch 2, resumed: the average goes on from its saved state, to the uninterrupted run's, bit for bit.
    resume = tmp_path / "resume.pt"

    def kill_after_epoch_2(row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train("cnn", CNN, digits_prepared, config, resume=resume, on_epoch=kill_after_epoch_2)
    assert torch.load(resume, weights_only=True)["average"]["n_averaged"].item() == 2 * -(-len(digits_prepared.train) // 64)
    ran = []
    resumed = train("cnn", CNN, digits_prepared, config, resume=resume, on_epoch=lambda row: ran.append(row["epoch"]))
    assert ran == [3, 4] and resumed.summary()["resumed_after_epochs"] == [2]  # taken up, not trained again from scratch
    assert [row["val_loss"] for row in resumed.history] == [row["val_loss"] for row in whole.history]
    assert same_weights(resumed.model, whole.model)


@pytest.mark.parametrize(("model", "settings"), [
    ("small_resnet", {"channels": [8, 16]}),
    ("small_resnet", {"channels": [4, 8, 8], "blocks": 2, "dropout": 0.1}),
    ("speedrun_cnn", {"channels": [8, 16, 32], "activation": "gelu"}),  # three halvings of the 8x8 digits: 1x1 at the end
])
def test_the_new_architectures_train_save_and_export_like_the_others(tmp_path, digits_prepared, model, settings, monkeypatch,
                                                                     mlflow_store, experiment):
    config = replace(FAST, epochs=3, lr=0.003)
    result = train(model, settings, digits_prepared, config)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] and result.summary()["val_accuracy"] > 0.5
    loaded, meta = saved_and_loaded(tmp_path, result, digits_prepared, model, settings, config)
    images = torch.from_numpy(digits_prepared.test.images)
    result.model.eval()
    with torch.no_grad():
        expected = result.model(images)
        assert torch.equal(loaded(images), expected)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    assert torch.allclose(served_scores(loaded, meta, digits_prepared, experiment, images), expected, atol=1e-5)
