"""Tests of `smart_hf.artifact`."""
