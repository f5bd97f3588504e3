"""`python -m keras_classpca ...`: the `keras-classpca` command line (`cli.py`)."""

import sys

from keras_classpca.cli import main

sys.exit(main())
