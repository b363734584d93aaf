"""The logged model stands alone: it carries only the code its loader imports, names requirements derived
from that code, and loads and answers in an environment holding those requirements and nothing else, as a
deployment (`mlflow models serve` with its default environment manager, `mlflow models build-docker`) builds
it. Models logged before the package layout still load in this imgpipe."""

import base64
import io
import json
import os
import subprocess
import textwrap
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from environments import environment_for
from PIL import Image

from imgpipe.models.networks import Classifier, build_model
from imgpipe.serving import export
from imgpipe.serving.preprocessing import Preprocessing
from imgpipe.tracking import registry, runs
from imgpipe.tracking.store import artifacts_beside

CLASSES = tuple("0123456789")
PREPROCESSING = Preprocessing(class_names=CLASSES, image_shape=(1, 8, 8), background=(255, 255, 255), temperature=1.5)


def _model() -> Classifier:
    torch.manual_seed(0)
    return Classifier(build_model("cnn", (1, 8, 8), 10, channels=[4]), (0.3,), (0.4,), temperature=1.5).eval()


def _png(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def logged(tmp_path_factory, mlflow_store):
    """A model logged as the publish stage logs it, downloaded as a deployment gets it: (its folder, the model)."""
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_store
    try:
        model = _model()
        metrics = {"val_accuracy": 0.5, "train_seconds": 1.0, "started": "2026-11-28T10:00:00+00:00"}
        run_id = runs.log_training("stands-alone", "cnn", training="1" * 16, params={}, curves={}, metrics=metrics,
                                   model=model, example=np.zeros((2, 1, 8, 8), dtype=np.uint8), tags={}, datasets=[],
                                   preprocessing=PREPROCESSING)
        uri = mlflow.MlflowClient().get_run(run_id).data.tags[runs.MODEL_URI]
        folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path_factory.mktemp("deployed"))))
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return folder, model


def test_the_model_carries_the_loaders_code_and_nothing_more(logged):
    """What loading and answering needs (the loader, the pyfunc, decoding, the answer table), none of training,
    tracking or the command line; that it carries nothing the loaded model leaves unimported is checked where it
    loads alone (test_it_loads_and_answers_with_nothing_but_its_requirements)."""
    folder, _ = logged
    carried = {path.relative_to(folder / "code").as_posix() for path in (folder / "code").rglob("*.py")}
    assert {"imgpipe/__init__.py", "imgpipe/serving/loader.py", "imgpipe/serving/model.py", "imgpipe/serving/answer.py",
            "imgpipe/serving/preprocessing.py", "imgpipe/data/decode.py", "imgpipe/errors.py"} <= carried
    assert not {file for file in carried if file.startswith(("imgpipe/training/", "imgpipe/tracking/", "imgpipe/evaluation/",
                                                              "imgpipe/reporting/", "imgpipe/search/"))}, carried
    assert not {"imgpipe/predict.py", "imgpipe/params.py", "imgpipe/serving/export.py", "imgpipe/data/prepare.py"} & carried


def test_the_requirements_are_derived_from_what_that_code_imports(logged):
    folder, _ = logged
    named = [line for line in (folder / "requirements.txt").read_text().split() if line]
    # What serving, decoding and scoring import, pinned to this environment's versions without a local build tag.
    packages = ["mlflow", "numpy", "pandas", "pillow", "torch"]
    assert named == [f"{package}=={metadata.version(package).split('+')[0]}" for package in packages]
    assert export.distributions() == {"PIL": "pillow", "mlflow": "mlflow", "numpy": "numpy", "pandas": "pandas", "torch": "torch"}


def test_it_loads_and_answers_with_nothing_but_its_requirements(logged, tmp_path_factory, tmp_path):
    """A fresh environment of exactly requirements.txt (nothing of imgpipe's own environment, not imgpipe
    itself): MLflow loads the model there and answers as predict does here."""
    folder, model = logged
    requirements = (folder / "requirements.txt").read_text().split()
    python = environment_for(requirements, tmp_path_factory.getbasetemp() / "environments")
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8), dtype=np.uint8)
    (tmp_path / "request.json").write_text(json.dumps([_png(image) for image in images]))
    script = textwrap.dedent(f"""
        import json, sys
        import mlflow.pyfunc, pandas as pd
        model = mlflow.pyfunc.load_model({str(folder)!r})
        answer = model.predict(pd.DataFrame({{"image": json.load(open("request.json"))}}))
        ours = sorted(module.__file__ for name, module in sys.modules.items() if name.split(".")[0] == "imgpipe")
        print(json.dumps({{"answer": answer.to_dict("list"), "ours": ours}}))
    """)
    done = subprocess.run([str(python), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Worked out here: pixels / 255, normalized by (0.3, 0.4), through the network, scores / temperature 1.5, softmax.
    with torch.no_grad():
        pixels = torch.from_numpy(images[:, None]).float() / 255
        probabilities = (model.net((pixels - 0.3) / 0.4) / 1.5).softmax(1)
    confidence, best = probabilities.topk(3, dim=1)
    assert result["answer"]["predicted"] == [CLASSES[i] for i in best[:, 0]]
    assert result["answer"]["confidence"] == pytest.approx(confidence[:, 0].tolist(), abs=1e-4)
    assert result["answer"]["top3"] == [CLASSES[i] for i in best[:, 2]]
    # It ran its own copy of imgpipe, and every file it carries was run: the code it carries is what it needs.
    # (MLflow runs the loader from the model's root, loader.py: its copy under code/ is carried but not run.)
    assert result["ours"] and all(file.startswith(str(folder / "code")) for file in result["ours"])
    carried = {path.relative_to(folder / "code").as_posix() for path in (folder / "code").rglob("*.py")}
    assert {Path(file).relative_to(folder / "code").as_posix() for file in result["ours"]} == carried - {"imgpipe/serving/loader.py"}


OLD_LOADER = """
import mlflow

from imgpipe.serving import ImageClassifier

mlflow.models.set_model(ImageClassifier())
"""


def test_a_model_logged_before_the_package_layout_still_loads(tmp_path, mlflow_store, monkeypatch):
    """Before the layout, the loader imported imgpipe.serving.ImageClassifier and preprocessing.json had no
    temperature; predict (this imgpipe, imported already) still loads such a model."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    loader = tmp_path / "serving_loader.py"
    loader.write_text(OLD_LOADER)
    model = _model()
    files = export.artifacts(model, np.zeros((2, 1, 8, 8), dtype=np.uint8), PREPROCESSING, tmp_path)
    Path(files["preprocessing"]).write_text(json.dumps({"class_names": list(CLASSES), "image_shape": [1, 8, 8],
                                                        "background": [255, 255, 255]}))
    with mlflow.start_run(experiment_id=mlflow.MlflowClient().create_experiment("old-layout", artifact_location=artifacts_beside(mlflow_store))):
        logged = mlflow.pyfunc.log_model(name="model", python_model=str(loader), artifacts=files,
                                         pip_requirements=["mlflow"])
    network, preprocessing = registry.load(logged.model_uri)
    assert preprocessing == Preprocessing(CLASSES, (1, 8, 8), (255, 255, 255), 1.0)
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 1, 8, 8), dtype=np.uint8))
    with torch.no_grad():
        assert torch.allclose(network(images), model(images), atol=1e-5)


@pytest.mark.parametrize("name, settings", [("centroid", {"distance": "l2"}), ("centroid", {"distance": "l1"}),
                                            ("linear", {}), ("mlp", {"hidden": [16]}), ("cnn", {"channels": [4]})])
def test_the_exported_program_answers_batches_larger_than_its_example(name, settings, tmp_path):
    """The program is traced on a few images: no size seen there (a branch of torch.cdist taken below 26 rows)
    may become a limit on the batches it serves (the centroid served 360 test images as a 400)."""
    torch.manual_seed(0)
    network = build_model(name, (1, 8, 8), 10, **settings)
    if name == "centroid":
        images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (40, 1, 8, 8), dtype=np.uint8))
        network.fit(images.float() / 255, torch.arange(40) % 10)
    model = Classifier(network, (0.3,), (0.4,)).eval()
    files = export.artifacts(model, np.zeros((2, 1, 8, 8), dtype=np.uint8), PREPROCESSING, tmp_path)
    program = torch.export.load(files["program"]).module()
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (64, 1, 8, 8), dtype=np.uint8))
    with torch.no_grad():
        assert torch.allclose(program(batch), model(batch), atol=1e-5)
