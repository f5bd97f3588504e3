"""Export for TF Serving (`export`) and reading the export back (`requests`)."""

from keras_classpca.serving.export import export_for_serving
from keras_classpca.serving.requests import artifact_sizes, predict_request_body, signature_info

__all__ = ["artifact_sizes", "export_for_serving", "predict_request_body", "signature_info"]
