"""`python -m archaudit`: the same command as the `archaudit` script (works without installing it)."""

from archaudit.cli import main

raise SystemExit(main())
