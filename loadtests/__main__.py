"""`python -m loadtests ...`: the runner behind `vaxline loadtest`."""

import sys

from .runner import main

sys.exit(main())
