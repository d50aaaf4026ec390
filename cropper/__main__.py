"""``python -m cropper``: the command line, as ``cropper``."""

import sys

from cropper.cli.main import main

sys.exit(main())
