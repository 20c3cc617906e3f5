"""``python -m bench [options]``: the same as ``tenantkeys bench [options]``."""

from __future__ import annotations

import sys

from tenantkeys.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
