"""smart_hf's benchmarks, one module each, run from the repository root as ``python -m benchmarks.<name>``:
``topk`` (the operator), ``overhead`` (training-step cost), ``inference`` (latency of the exported forms),
``macs`` (MAC predictions), ``quality`` (pruned-model quality vs baselines). Each prints markdown tables and writes
JSON with the command and the environment (`benchmarks._common`); ``--smoke`` runs in seconds and is run in CI."""
