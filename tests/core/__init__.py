"""Tests of `smart_hf.core`."""
