"""What every layer of the package may need of the pipeline, and nothing more:
the error that stops a stage (raised by the runner, the stages and the helpers
they call) and the code version every manifest records. It sits beside config,
log and artifacts at the bottom of the package, so a helper can raise
`StageError` without importing the runner above it (see tests/test_layers.py).
"""

from __future__ import annotations

import functools
import subprocess

from . import __version__


class StageError(RuntimeError):
    """A stage cannot go on; the message says what went wrong and what to do."""


@functools.cache
def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    from .config import PACKAGE_DIR

    try:
        sha = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        return f"{__version__}+g{sha}"
    except (OSError, subprocess.SubprocessError):
        return __version__
