"""`warn`: a warning attributed to the user's line, however deep in the package it
is raised (the first frame outside `keras_classpca`), where a fixed `stacklevel`
points at whichever package function happened to call the one that warns."""

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _in_package(frame):
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE)


def user_stacklevel():
    """The `stacklevel` of the first frame outside the package, for a
    `warnings.warn` called by the caller of this function."""
    frame, level = sys._getframe(1), 1  # the caller of `warnings.warn`: level 1
    while frame.f_back is not None and _in_package(frame):
        frame, level = frame.f_back, level + 1
    return level


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
    warnings.warn(message, category, stacklevel=user_stacklevel() + 1)
