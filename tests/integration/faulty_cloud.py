"""``autoglm ARGS`` with a fault injected into the cloud's engine thread, for the tests.

The request whose prompt is ``engine-bug`` makes the engine loop raise outside a step, a stand-in
for a bug there (a step's own errors fail only the requests that cause them). The prompt, not
the request id: the engine never sees a client's id (it gets one the server generates).
"""

from __future__ import annotations

import sys
from typing import Any

from autoglm_cli import main
from cloud.engine.loop import AsyncEngine

_apply = AsyncEngine._apply


def _faulty_apply(self: AsyncEngine, cmd: tuple[Any, ...]) -> None:
    if cmd[0] == "add" and cmd[2] == "engine-bug":
        raise RuntimeError("fault injected into the engine loop")
    _apply(self, cmd)


AsyncEngine._apply = _faulty_apply  # type: ignore[method-assign]

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
