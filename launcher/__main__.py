"""`python -m launcher` is the same as the `runq` command."""

from launcher.cli.main import main

raise SystemExit(main())
