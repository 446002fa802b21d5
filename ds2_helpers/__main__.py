"""Entry point for ``python -m ds2_helpers``."""

from ds2_helpers.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
