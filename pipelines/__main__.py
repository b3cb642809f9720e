"""`python -m pipelines <command>`: see pipelines/cli.py, or `python -m pipelines --help`."""

import sys

from pipelines.cli import main

sys.exit(main(sys.argv[1:]))
