"""Tests of `smart_hf.slim`."""
