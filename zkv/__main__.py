"""`python -m zkv`: the same entry point as the `zkv` command."""

from zkv.cli import main

raise SystemExit(main())
