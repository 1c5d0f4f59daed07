"""``python -m bitsmith.cli``."""

import sys

from . import main

sys.exit(main())
