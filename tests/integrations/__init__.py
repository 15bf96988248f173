"""Tests of `smart_hf.integrations`."""
