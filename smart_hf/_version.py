"""The package version, in a module of its own so that writers of artifacts can stamp it without importing the
whole package (``smart_hf/__init__.py`` loads every layer)."""

__version__ = "0.2.0"
