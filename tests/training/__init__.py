"""Tests of `smart_hf.training`."""
