"""The ``smart-hf`` command line (`commands`; its entry point `main` is re-exported here): its arguments and
recipes (`arguments`, `help`), how it reports a user's mistakes (`errors`), re-export (`export`), the recipe runner
(`train`), its data loaders (`data`, `splits`), the main job's artifact table (`slim_table`) and the offline
`evaluate` metrics it uses (`metrics`)."""

from .commands import DataArguments, ModelArguments, export_artifact, main, make_parser, parse_recipe

__all__ = ["DataArguments", "ModelArguments", "export_artifact", "main", "make_parser", "parse_recipe"]
