"""The model MLflow logs and serves. It stands alone: its loader imports only what answering a request
needs (this package, image decoding, class scores, errors), and the model carries just that code."""


def __getattr__(name: str):
    # Models logged before the package layout load `from imgpipe.serving import ImageClassifier`; where this
    # imgpipe is imported already (predict), that import must find the class here.
    if name == "ImageClassifier":
        from imgpipe.serving.model import ImageClassifier

        return ImageClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
