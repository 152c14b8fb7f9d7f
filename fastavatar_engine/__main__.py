"""``python -m fastavatar_engine ...`` = the ``fastavatar`` command (the add-on starts the engine this way)."""

import sys

from .cli import main

sys.exit(main())
