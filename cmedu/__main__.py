"""`python -m cmedu ...`: the command line (see cmedu/cli.py)."""
from .cli import main

raise SystemExit(main())
