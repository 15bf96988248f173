"""``python -m smart_hf.cli ...`` runs the ``smart-hf`` command line."""

from .commands import main

if __name__ == "__main__":
    raise SystemExit(main())
