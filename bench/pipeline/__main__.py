"""`python -m bench.pipeline`: the command line of the pipeline benchmark."""

import sys

from .cli import main

sys.exit(main())
