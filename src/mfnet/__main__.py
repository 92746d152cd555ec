"""``python -m mfnet`` runs the command line."""

from mfnet.cli import main

raise SystemExit(main())
