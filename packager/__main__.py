"""`python -m packager` runs the `packager` command."""

import sys

from packager.cli import main

sys.exit(main())
