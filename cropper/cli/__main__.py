"""``python -m cropper.cli``: the command line."""

import sys

from cropper.cli.main import main

sys.exit(main())
