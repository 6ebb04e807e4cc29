"""`python -m packager` runs the `packager` command."""

import sys

from packager.cli.service import main

sys.exit(main())
