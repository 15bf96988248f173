"""Modeling code that `smart_hf.slim` copies into per-layer slim artifacts (package data), so that stock
``AutoModelFor....from_pretrained(folder, trust_remote_code=True)`` loads them on machines without smart_hf."""
