"""Checks of the settings several entry points share (`seed`, `verbose`), one wording."""

import numpy as np


def checked_seed(seed):
    """`seed` as an int, or None; a `ValueError` unless a non-negative integer or None.

    >>> checked_seed(np.int64(3)), checked_seed(None)
    (3, None)
    """
    if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise ValueError(f"`seed` must be a non-negative integer or None; received {seed!r}.")
    return None if seed is None else int(seed)


def drawn_seed(seed):
    """`checked_seed(seed)`, with None drawn once from fresh entropy: a call given
    `seed=None` samples at random, yet reports a seed that repeats it."""
    seed = checked_seed(seed)
    return int(np.random.SeedSequence().generate_state(1)[0]) if seed is None else seed


def checked_verbose(verbose):
    """`verbose` as 0, 1 or 2 ("auto": 1, as `fit` shows a bar); a `ValueError` for
    anything else (True and False pass: they equal 1 and 0).

    >>> checked_verbose("auto"), checked_verbose(False)
    (1, 0)
    """
    if isinstance(verbose, str) and verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f'`verbose` must be 0, 1, 2 or "auto"; received {verbose!r}.')
    return int(verbose)
