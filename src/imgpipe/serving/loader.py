"""Read by MLflow when it loads a model imgpipe logged ("models from code"), never imported by imgpipe:
it names the pyfunc to build, whose load_context then reads the model's artifacts (imgpipe.serving.model)."""

import mlflow

from imgpipe.serving.model import ImageClassifier

mlflow.models.set_model(ImageClassifier())
