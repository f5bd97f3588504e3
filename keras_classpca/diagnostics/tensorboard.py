"""Scalars for TensorBoard, written where and how `keras.callbacks.TensorBoard` writes.

Keras' callback writes its per-epoch scalars (``epoch_loss``...) into the run
``<log_dir>/train`` at ``step = epoch`` (the 0-based index of the epoch just finished).
The monitors write their curves into the same run with the same steps, so that with one
``log_dir`` for both callbacks they sit next to the loss in TensorBoard; a measurement
taken before training is written at step -1.

Writing needs TensorFlow's ``tf.summary`` whatever the Keras backend (as Keras' own
callback does); it is imported only when a ``log_dir`` is given.
"""

import math
import os

from keras_classpca._optional import import_optional

__all__ = ["ScalarWriter"]

TRAIN_RUN = "train"


class ScalarWriter:
    """Write dicts of scalars per step to ``<log_dir>/train`` with ``tf.summary``.

    Raises `ImportError` naming the ``tensorflow`` extra at construction when
    TensorFlow is not importable.  The event file is opened at the first write.

    Args:
        log_dir: the TensorBoard log directory (the one given to
            `keras.callbacks.TensorBoard`, if any).
    """

    def __init__(self, log_dir):
        if log_dir is None or not str(log_dir):
            raise ValueError(f"`log_dir` must be a directory path; received {log_dir!r}.")
        self._tf = import_optional("tensorflow", "Writing to TensorBoard (`log_dir=`)")
        self.log_dir = os.fspath(log_dir)
        self.path = os.path.join(self.log_dir, TRAIN_RUN)
        self._writer = None

    def write(self, step, scalars):
        """Write ``{tag: value}`` at ``step``; None and NaN values are skipped."""
        tf = self._tf
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.path)
        with self._writer.as_default():
            for tag, value in scalars.items():
                if value is None or math.isnan(float(value)):
                    continue
                tf.summary.scalar(tag, float(value), step=int(step))
        self._writer.flush()

    def close(self):
        """Close the event file (a later `write` opens a new one)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
