"""Scoring trained models on held-out images: accuracy and its uncertainty, calibration, where a model
looked, and which labels look wrong."""
