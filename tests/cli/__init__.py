"""Tests of `smart_hf.cli`."""
