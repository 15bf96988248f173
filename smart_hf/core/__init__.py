"""Pure math, no model code: the differentiable top-k (`topk`), temperature schedules (`schedule`), integer budgets
(`budget`) and the unit geometry of a weight (`granularity`). Everything here takes tensors or numbers and returns
tensors or numbers, and is tested against a reference."""
