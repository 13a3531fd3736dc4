"""``python -m autoglm``: the same as the ``autoglm`` command."""

from autoglm.cli import main

raise SystemExit(main())
