"""Read by MLflow when it loads a model imgpipe logged ("models from code"), never imported by imgpipe:
it names the pyfunc to build, whose load_context then reads the model's artifacts (imgpipe.serving)."""

import mlflow

from imgpipe.serving import ImageClassifier

mlflow.models.set_model(ImageClassifier())
