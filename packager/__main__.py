"""`python -m packager` runs the `packager` command."""

import sys

from packager.cli.main import main

sys.exit(main())
