"""What leaves the training run: the pruned artifact (`export.save_pruned`), its model card (`card`), the Hub push
(`hub`), crash-safe writes (`atomic`), the invariant checker (`invariants.check_sparsity`), sparse kernels
(`kernels`) and plots (`plots`)."""
