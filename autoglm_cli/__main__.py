"""``python -m autoglm_cli``: the same as the ``autoglm`` command."""

from autoglm_cli import main

raise SystemExit(main())
