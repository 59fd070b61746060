"""Named points where a test freezes a build, so that a kill lands exactly there.

A build process whose ``QWEN_ASSETS_PAUSE_AT`` names a point it reaches stops itself
(SIGSTOP) at that point; the test, seeing the process stopped, kills it (SIGKILL) or lets it
go on (SIGCONT). Polling for a file that exists for milliseconds cannot do that reliably. The
variable is read at each point, so a build without it pays one dictionary lookup.

Points: ``asset:<asset name>`` as an asset's body starts (its inputs were recorded and its
own step has begun); ``site_data:staged`` once the site's new files are written beside the
old; ``site_data:committed`` once its tables are committed and before the files are swapped
in; ``copy_database:copied`` once the copy people will query is written, before it is
renamed into place.
"""

from __future__ import annotations

import os
import signal

PAUSE_ENV = "QWEN_ASSETS_PAUSE_AT"


def pause_point(name: str) -> None:
    """Stop this process here when the environment names this point (tests only)."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGSTOP)
