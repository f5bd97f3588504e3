"""Export for TF Serving and the helpers that talk to it."""

from keras_classpca.serving.export import (
    artifact_sizes,
    export_for_serving,
    predict_request_body,
    signature_info,
)

__all__ = ["artifact_sizes", "export_for_serving", "predict_request_body", "signature_info"]
