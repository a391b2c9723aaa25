"""Command line entry: python -m core <command> … (the commands live in core.cli)."""

from core.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
