"""`python -m swarm.cli ...` is `swarm ...`."""

import sys

from swarm.cli import main

sys.exit(main())
