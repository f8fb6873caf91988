"""``python -m rarec_lite`` is the same as the ``rarec-lite`` command."""

from rarec_lite.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
