"""`warn`: a warning attributed to the user's line, however deep in the package it
is raised (the line that called into `keras_classpca`), where a fixed `stacklevel`
points at whichever package function happened to call the one that warns."""

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _in_package(frame):
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE)


def user_stacklevel():
    """The `stacklevel`, for a `warnings.warn` called by the caller of this function,
    of the frame that called into the package: the caller of its outermost frame (the
    package's calls may pass through others' frames, e.g. a decorator of a backend)."""
    frame, level, outermost = sys._getframe(1), 1, 1  # the caller of `warnings.warn`: 1
    while frame is not None:
        if _in_package(frame):
            outermost = level
        frame, level = frame.f_back, level + 1
    return min(outermost + 1, level - 1)


def warn(message, category=UserWarning):
    """`warnings.warn(message, category)` attributed to the user's line.

    Example:

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     warn("checked")
    >>> caught[0].filename == __file__ or "doctest" in caught[0].filename
    True
    """
    warnings.warn(message, category, stacklevel=user_stacklevel())
