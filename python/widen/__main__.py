"""python -m widen ARGS: runs the widen command line (the binary beside the library, else on PATH)."""
from __future__ import annotations

import os
import shutil
import sys
from typing import List, Optional


def find_cli() -> Optional[str]:
    """The widen binary: $WIDEN_CLI, beside the library loaded (a build tree; ../bin from a lib
    folder), else on PATH."""
    if os.environ.get("WIDEN_CLI"):
        return os.environ["WIDEN_CLI"]
    from . import _lib
    if _lib.LIBRARY_PATH:
        here = os.path.dirname(_lib.LIBRARY_PATH)
        for candidate in (os.path.join(here, "widen"), os.path.join(here, "..", "bin", "widen")):
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return os.path.abspath(candidate)
    return shutil.which("widen")


def main(argv: List[str]) -> int:
    cli = find_cli()
    if cli is None:
        sys.stderr.write("widen: error: the widen command is not beside the library or on PATH (set WIDEN_CLI)\n")
        return 2
    os.execv(cli, [cli] + argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
