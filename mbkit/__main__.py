"""`python -m mbkit`: the command line (`mbkit.cli`)."""

import sys

from mbkit.cli import main

sys.exit(main())
