"""``python -m research``: the ``research`` command (pyproject's console script ``research.cli:main``)."""

from research.cli import main

raise SystemExit(main())
