"""The quality benchmark: SMART against peer pruners at the same budget and steps. `run` (CLI and orchestration),
`core` (dense pretrain, the shared window loop, SMART), `baselines` (the peers), `report` (tables, goals, plot)."""
