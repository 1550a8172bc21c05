"""``python -m cacheorch``."""
from cacheorch.cli import main

raise SystemExit(main())
