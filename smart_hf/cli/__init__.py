"""The ``smart-hf`` command line (`main`), the recipe runner (`train`), its offline data loaders (`data`) and the
offline `evaluate` metrics it uses (`metrics`)."""

from .main import DataArguments, ModelArguments, export_artifact, main, make_parser, parse_recipe

__all__ = ["DataArguments", "ModelArguments", "export_artifact", "main", "make_parser", "parse_recipe"]
