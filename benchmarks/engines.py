"""Where users deploy: one model run by eager PyTorch, ``torch.compile`` and ONNX Runtime, timed side by side.

`engine_runners` turns a model into ``{engine: callable(inputs)}``: ``eager`` (the module under
``torch.inference_mode``), ``compile`` (``torch.compile(model)``, compiled on the first call: the warm-up) and
``onnx`` (``torch.onnx.export(..., dynamo=True)`` with a dynamic batch dimension, run by ONNX Runtime's
``CPUExecutionProvider``). Every engine's output is checked equal to eager's (max abs difference recorded, a
mismatch beyond ``ATOL`` raises) before it is timed. `round_robin_ms` times several callables in turns, so a
shared machine's load hits all of them alike.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from torch import nn

ENGINES = ("eager", "compile", "onnx")
ATOL = 1e-3  # float32 graph rewrites (fused attention, reordered sums) move logits by ~1e-5 on these shapes


def round_robin_ms(runners: dict, inputs: dict, repeats: int) -> dict[str, list[float]]:
    """Per runner, ``repeats`` call times in ms, one call of each per round after two warm-ups each (a new batch
    size makes ``torch.compile`` recompile, once static and once with a dynamic batch dimension)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for run in list(runners.values()) * 2:
            run(inputs)
        for _ in range(repeats):
            for name, run in runners.items():
                start = time.perf_counter()
                run(inputs)
                times[name].append(1e3 * (time.perf_counter() - start))
    return times


def _logits(out):
    return out.logits if hasattr(out, "logits") else out[0]


def _onnx_runner(model: nn.Module, example: dict, workdir: str):
    import onnxruntime as ort

    names = [k for k, v in example.items() if torch.is_tensor(v)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {k: {0: batch} for k in names}
    program = torch.onnx.export(model, args=(), kwargs={k: example[k] for k in names}, dynamic_shapes=dynamic, dynamo=True)
    path = os.path.join(workdir, f"model_{id(model)}.onnx")
    program.save(path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return lambda inputs: session.run(None, {k: v.numpy() for k, v in inputs.items() if k in wanted})[0]


def engine_runners(model: nn.Module, engines: tuple[str, ...], example: dict, workdir: str | None = None) -> tuple:
    """``({engine: run(inputs)}, {engine: max |output - eager|}, {engine: seconds to build}, {engine: why not})``
    for ``model``. An engine that cannot take the model (BSR weights do not export) or whose output differs from
    eager's by more than `ATOL` is left out of the runners and its reason recorded, never timed."""
    workdir = workdir or tempfile.mkdtemp(prefix="smart_hf_onnx_")
    with torch.inference_mode():
        reference = _logits(model(**example)).float()
    runners, errors, build_s, failed = {}, {}, {}, {}
    for engine in engines:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose from {list(ENGINES)}.")
        start = time.perf_counter()
        try:
            run = _build(engine, model, example, workdir)
            with torch.inference_mode():
                out = torch.as_tensor(run(example)).float().to(reference.device)  # compile's warm-up happens here
        except Exception as err:  # noqa: BLE001 -- an engine that cannot run this model is reported, not fatal
            failed[engine] = f"{type(err).__name__}: {str(err)[:200]}"
            continue
        build_s[engine] = time.perf_counter() - start
        errors[engine] = float((out - reference).abs().max())
        if errors[engine] > ATOL:
            failed[engine] = f"output differs from eager by {errors[engine]:.2e} (> {ATOL})"
            continue
        runners[engine] = run
    return runners, errors, build_s, failed


def _build(engine: str, model: nn.Module, example: dict, workdir: str):
    if engine == "eager":
        return lambda inputs: _logits(model(**inputs))
    if engine == "compile":
        compiled = torch.compile(model)
        return lambda inputs: _logits(compiled(**inputs))
    return _onnx_runner(model, example, workdir)
