"""Tests of `smart_hf.latency`."""
