import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from imgpipe.checkpoint import load_checkpoint, save_checkpoint
from imgpipe.config import TrainConfig
from imgpipe.errors import ImgpipeError
from imgpipe.evaluate import evaluate
from imgpipe.train import train

FAST = TrainConfig(epochs=3, batch_size=64, lr=0.01, device="cpu")


@pytest.mark.parametrize("model, settings", [("linear", {}), ("mlp", {"hidden": [32]}), ("cnn", {"channels": [8]})])
def test_every_model_learns_the_digits(digits_prepared, model, settings):
    result = train(model, settings, digits_prepared, FAST)
    assert len(result.history) == 3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["val_accuracy"] > 0.8  # chance is 0.1
    assert result.seconds > 0 and result.images_per_second > 0


def test_same_settings_give_identical_runs_on_cpu(digits_prepared):
    a = train("cnn", {"channels": [4]}, digits_prepared, FAST)
    b = train("cnn", {"channels": [4]}, digits_prepared, FAST)
    assert a.history == b.history
    for wa, wb in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(wa, wb)
    c = train("cnn", {"channels": [4]}, digits_prepared, TrainConfig(epochs=3, lr=0.01, device="cpu", seed=1))
    assert c.history != a.history


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


def test_evaluation_agrees_with_scikit_learn(digits_prepared):
    model = train("linear", {}, digits_prepared, FAST).model
    result = evaluate(model, digits_prepared.test, torch.device("cpu"))
    actual = digits_prepared.test.labels
    assert result["accuracy"] == pytest.approx(accuracy_score(actual, result["predicted"]))
    np.testing.assert_array_equal(result["confusion"], sk_confusion_matrix(actual, result["predicted"], labels=range(10)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_cuda(digits_prepared):
    result = train("cnn", {"channels": [8]}, digits_prepared, TrainConfig(epochs=2, device="cuda"))
    assert result.device == "cuda" and next(result.model.parameters()).is_cuda
    assert result.history[-1]["val_accuracy"] > 0.5
