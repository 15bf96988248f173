"""The Fisher mask-search baseline of the equal-speed benchmark (`benchmarks.fisher_pruning`): per-example Fisher
against a loop over single examples, the mask search against brute force, masks against removed columns."""

from __future__ import annotations

import itertools

import pytest
import torch
from tiny_models import tiny_bert

from benchmarks.fisher_pruning import attach_masks, fisher_importance, mask_search


def _owners(model) -> dict[str, int]:
    """Coupled owners of the tiny BERT (2 heads of 16 columns, 64 FFN neurons per layer) -> units."""
    return {
        f"bert.encoder.layer.{i}.{name}": units
        for i in range(2)
        for name, units in (("attention.output.dense", 2), ("output.dense", 64))
    }


def _batch(n: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 100, (n, 8), generator=gen)
    return {"input_ids": ids, "labels": torch.randint(0, 3, (n,), generator=gen)}


def test_fisher_batched_equals_single_example_loop():
    torch.manual_seed(0)
    model = tiny_bert()
    owners = _owners(model)
    batch = _batch(6)
    batched = fisher_importance(model, owners, [batch])
    single = fisher_importance(model, owners, [{k: v[i : i + 1] for k, v in batch.items()} for i in range(6)])
    for name in owners:
        assert batched[name].shape == (owners[name],)
        assert batched[name].sum() > 0
        torch.testing.assert_close(batched[name], single[name], rtol=1e-4, atol=1e-10)
    # the square of the batch gradient, (sum_i g_i)^2, is not the Fisher sum_i g_i^2: the check above can fail
    hooks = attach_masks(model, owners)
    masks = {n: torch.ones(u, requires_grad=True) for n, u in owners.items()}
    for n, (holder, _) in hooks.items():
        holder[0] = masks[n]
    logits = model.eval()(input_ids=batch["input_ids"]).logits
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum")
    grads = torch.autograd.grad(loss, list(masks.values()))
    for _, handle in hooks.values():
        handle.remove()
    assert not all(torch.allclose(g.pow(2), batched[n], rtol=1e-2) for n, g in zip(masks, grads))
    assert not model.bert.encoder.layer[0].attention.output.dense._forward_pre_hooks  # hooks removed


def test_zero_mask_equals_removed_columns():
    torch.manual_seed(0)
    model = tiny_bert().eval()
    owners = _owners(model)
    inputs = {"input_ids": _batch(3)["input_ids"]}
    hooks = attach_masks(model, owners)
    name = "bert.encoder.layer.1.attention.output.dense"
    hooks[name][0][0] = torch.tensor([1.0, 0.0])
    masked = model(**inputs).logits
    for _, handle in hooks.values():
        handle.remove()
    with torch.no_grad():
        model.get_submodule(name).weight[:, 16:] = 0  # head 1's columns
    torch.testing.assert_close(masked, model(**inputs).logits)


def _brute_force(heads: dict, neurons: dict, budget: float) -> float:
    """The highest kept Fisher over every subset with >= 1 unit per owner within the budget."""
    units = [(o, i, float(f[i]), c) for o, (f, c) in {**heads, **neurons}.items() for i in range(len(f))]
    best = -1.0
    for choice in itertools.product([False, True], repeat=len(units)):
        kept = [u for u, keep in zip(units, choice) if keep]
        if {o for o, *_ in kept} != set(heads) | set(neurons) or sum(u[3] for u in kept) > budget + 1e-12:
            continue
        best = max(best, sum(u[2] for u in kept))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_mask_search_matches_brute_force(seed):
    gen = torch.Generator().manual_seed(seed)
    heads = {f"h{i}": (torch.rand(3, generator=gen), 5.0) for i in range(2)}  # a head costs 5, a neuron 1
    neurons = {f"f{i}": (torch.rand(3, generator=gen) * 0.5, 1.0) for i in range(2)}
    budget = float(torch.randint(13, 28, (1,), generator=gen))
    keep = mask_search(heads, neurons, budget)
    cost = sum(float(keep[o].sum()) * c for o, (_, c) in {**heads, **neurons}.items())
    total = sum(float(f[keep[o]].sum()) for o, (f, _) in {**heads, **neurons}.items())
    assert cost <= budget + 1e-9
    assert all(keep[o].any() for o in keep)
    assert total == pytest.approx(_brute_force(heads, neurons, budget))


def test_mask_search_refuses_a_budget_below_one_unit_per_owner():
    heads = {"h": (torch.ones(2), 5.0)}
    neurons = {"f": (torch.ones(4), 1.0)}
    with pytest.raises(ValueError, match="below"):
        mask_search(heads, neurons, 5.5)
