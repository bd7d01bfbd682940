"""Run a service context in the foreground until Ctrl-C or SIGTERM (scripts/tracking_server.sh,
scripts/slurm_single_node.sh): what both helpers' command lines share."""

from __future__ import annotations

import signal
import sys
import time
from typing import Callable, ContextManager


def serve(start: Callable[[], ContextManager], describe: Callable[[object], str], errors: type[Exception],
          prog: str) -> int:
    """Enter ``start()``, print ``describe(value)``, wait for Ctrl-C or SIGTERM, leave the context (which
    stops the service); 0, or 2 with the message of an ``errors`` exception."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    try:
        with start() as value:
            print(describe(value), flush=True)
            while not stop:
                time.sleep(1)
    except KeyboardInterrupt:
        pass
    except errors as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0
