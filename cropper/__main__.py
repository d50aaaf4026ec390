"""``python -m cropper``: the command line, as ``cropper``."""

import sys

from cropper.cli import main

sys.exit(main())
