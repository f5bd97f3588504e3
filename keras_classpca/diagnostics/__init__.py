"""Watch training: time scales of the layers, their alignment, plots."""

from keras_classpca.diagnostics.alignment_monitor import AlignmentMonitor
from keras_classpca.diagnostics.timescale_monitor import TimescaleMonitor

__all__ = ["AlignmentMonitor", "TimescaleMonitor"]
