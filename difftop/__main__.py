"""``python -m difftop ...`` is the ``difftop`` command; torchrun needs it: ``torchrun -m difftop il ...``."""

import sys

from difftop.cli import main

sys.exit(main())
