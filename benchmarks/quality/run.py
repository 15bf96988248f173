#!/usr/bin/env python
"""Quality benchmark: SMART against peer pruners at the same budget and the same optimizer steps.

Per (task, seed) one dense pretrain is cached in a temp dir; every method starts from it and gets the same post-dense
window of optimizer steps (same seeded batches, same warm-up + cosine LR): ``dense`` keeps training; one-shot
methods prune at the start and fine-tune the whole window; GMP and movement prune gradually over the first half;
SMART searches over the first half and fine-tunes with the hard mask (``benchmarks/quality/core.py``,
``benchmarks/quality/baselines.py``). Rows record val/test accuracy and the sparsity measured on the final weights.

    HF_HUB_OFFLINE=1 python -m benchmarks.quality                 # the default matrix (docs/benchmarks.md)
    HF_HUB_OFFLINE=1 python -m benchmarks.quality --smoke         # tiny models, a few steps; what CI runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

import smart_hf as sh
from smart_hf.demo_data import (
    load_digits_splits,
    load_tweet_sentiment,
    minilm_path,
    stratified_split,
    tweet_sentiment_corpus,
)

from .._common import environment, result_header
from .baselines import BASELINES, applicable
from .core import (
    DenseMethod,
    SmartMethod,
    Task,
    accuracy,
    parse_pattern,
    run_window,
    train_steps,
    weight_groups,
)
from .report import summarise, write_outputs

# the default matrix (the full run in about an hour on 2 cores); --smoke covers every pattern and method
DIGITS_PATTERNS = ["block4x4@0.9", "block4x4@0.75", "block4x4@0.5", "channel@0.5", "nm2:4", "nm1:4"]
DIGITS_PATTERNS_ALL = ["block4x4@0.5", "block4x4@0.75", "block4x4@0.9", "channel@0.3", "channel@0.5", "nm2:4", "nm1:4"]
MINILM_PATTERNS = ["nm2:4"]
METHODS = ["dense", "magnitude", "gmp", "wns", "torch_pruning", "wanda", "movement", "smart_frozen", "smart"]
DEFAULT_METHODS = ["dense", "magnitude", "gmp", "wanda", "smart_frozen", "smart"]
MINILM_METHODS = ["dense", "wanda", "smart_frozen", "smart"]
MINILM_METHODS_ALL = ["dense", "magnitude", "wanda", "smart_frozen", "smart"]
ABLATIONS_FILE = Path(__file__).with_name("ablations.yaml")
# SMART options the benchmark's method takes beside the SmartConfig fields (`SmartMethod`, `run_window`'s distill)
METHOD_OPTIONS = ("search_fraction", "score_lr", "mask_only", "distill")


def load_ablations(path: str | os.PathLike = ABLATIONS_FILE) -> dict:
    """The SMART variants of ``path``: ``{"ablations": {label: options}, "default": [label, ...], "smoke": [label,
    ...], "patterns": [pattern, ...]}`` (``smoke`` = the default labels, then ``smoke_extra``).

    Raises:
        ValueError: If a list names a label the file does not define, or an option is neither a `SmartConfig`
            field nor one of `METHOD_OPTIONS`.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    ablations = data["ablations"]
    fields = {f.name for f in dataclasses.fields(sh.SmartConfig)}
    for label, options in ablations.items():
        unknown = sorted(set(options) - fields - set(METHOD_OPTIONS))
        if unknown:
            allowed = f"SmartConfig fields nor {METHOD_OPTIONS}"
            raise ValueError(f"{path}: ablation {label!r} sets {unknown}, neither {allowed}.")
    smoke = data["default"] + data["smoke_extra"]
    missing = sorted(set(smoke) - set(ablations))
    if missing:
        raise ValueError(f"{path}: default / smoke_extra name {missing}, which are not under ablations.")
    return {"ablations": ablations, "default": data["default"], "smoke": smoke, "patterns": data["patterns"]}


_LOADED = load_ablations()
ABLATIONS = _LOADED["ablations"]  # SMART variants (digits only); the default row is "smart" itself
DEFAULT_ABLATIONS = _LOADED["default"]
SMOKE_ABLATIONS = _LOADED["smoke"]  # what --smoke runs: every SMART option the benchmark can turn
ABLATION_PATTERNS = _LOADED["patterns"]
DIGITS_LAYERS = 4  # DeiT-tiny has 12; 4 keeps the full matrix within ~1 h on 2 shared cores (docs/benchmarks.md)


def digits_task(smoke: bool, scale: float, layers: int = DIGITS_LAYERS) -> Task:
    """DeiT-tiny width (hidden 192, 3 heads, MLP 768; ``layers`` blocks) from scratch on 8x8 digits, patch 2."""
    from transformers import ViTConfig, ViTForImageClassification

    shape = dict(hidden_size=192, num_hidden_layers=layers, num_attention_heads=3, intermediate_size=768)
    if smoke:
        shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
    config = ViTConfig(image_size=8, patch_size=2, num_channels=1, num_labels=10, **shape)
    ds = load_digits_splits(image_size=8, num_channels=1)
    splits = {s: ds[s][:] for s in ds}  # whole split as tensors: row access to a Dataset per step is slow

    def build(seed: int):
        torch.manual_seed(seed)
        return ViTForImageClassification(config)

    steps = task_steps("digits", smoke, scale)
    return Task("digits-deit", build, splits, 32, 5e-4, 0.05, steps[0], steps[1], 2 if smoke else 10)


def minilm_task(smoke: bool, scale: float, classes: int = 2) -> Task:
    """Pretrained MiniLM-L6 (smoke: a tiny random BERT with its tokenizer) on tweet sentiment, seq 48: binary
    (negative / positive, ``classes=2``) or negative / neutral / positive (``classes=3``, task ``minilm3``)."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
    )

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    sizes = dict(train_size=64, val_size=32, test_size=32, extra_val_size=0) if smoke else TWEET_SIZES
    splits = tweet_splits(tokenizer, binary=classes == 2, **sizes)

    def build(seed: int):
        torch.manual_seed(seed)
        if smoke:
            cfg = BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=classes,
            )
            return BertForSequenceClassification(cfg)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=classes)

    steps = task_steps("minilm", smoke, scale)
    name = "minilm-tweets" if classes == 2 else f"minilm-tweets-{classes}class"
    # the tweets drawn before (and so deciding) the train split: what a cached dense checkpoint depends on
    drawn = {"test": sizes["test_size"], "validation": sizes["val_size"], "train": sizes["train_size"]}
    extra = {"draw_sizes": drawn}
    return Task(name, build, splits, 16, 5e-5, 0.01, steps[0], steps[1], 2 if smoke else 10, 128, extra)


def minilm3_task(smoke: bool, scale: float) -> Task:
    """MiniLM on the 3-class tweets (a harder task than the binary one; same sizes and steps)."""
    return minilm_task(smoke, scale, classes=3)


TASKS = {"digits": digits_task, "minilm": minilm_task, "minilm3": minilm3_task}
# >= 5,000 test tweets, so that one error is 0.02 points (the binary subset has 23,140 tweets); 5,000 validation
# tweets too, so that defaults can be chosen at 0.2-point differences. The 4,000 added (extra_val_size) are drawn
# after the train split: train and test are those of the 1,000-validation-tweet runs and their dense checkpoints.
TWEET_SIZES = dict(train_size=2000, val_size=1000, extra_val_size=4000, test_size=5000)


def tweet_splits(
    tokenizer,
    binary: bool,
    train_size: int,
    val_size: int,
    test_size: int,
    extra_val_size: int,
    seed: int = 0,
    max_length: int = 48,
) -> dict[str, dict[str, torch.Tensor]]:
    """The tweet splits as whole tensors: `smart_hf.demo_data.load_tweet_sentiment`'s, with ``extra_val_size``
    more validation tweets drawn after its train split (`stratified_split` draws in order, so a fourth draw changes
    none of the first three): the train and test splits, and the first ``val_size`` validation tweets, are those of
    ``extra_val_size=0``."""
    if extra_val_size < 0:
        raise ValueError(f"extra_val_size must be >= 0, got {extra_val_size}.")
    ds = load_tweet_sentiment(
        tokenizer, max_length=max_length, binary=binary, train_size=train_size, val_size=val_size, test_size=test_size,
        seed=seed,
    )  # fmt: skip
    splits = {s: ds[s][:] for s in ds}  # whole split as tensors: row access to a Dataset per step is slow
    if not extra_val_size:
        return splits
    texts, labels, _ = tweet_sentiment_corpus(binary)
    sizes = [test_size, val_size, train_size, extra_val_size]
    if sum(sizes) > len(labels):
        raise ValueError(f"split sizes {sizes} (test, validation, train, extra validation) exceed the {len(labels)} "
                         "available tweets.")  # fmt: skip
    extra = stratified_split(labels, sizes, seed)[3]
    encoded = tokenizer([texts[i] for i in extra], padding="max_length", truncation=True, max_length=max_length)
    added = {column: torch.tensor(values, dtype=torch.int64) for column, values in encoded.items()}
    added["labels"] = torch.from_numpy(np.asarray(labels[extra], dtype=np.int64))
    splits["validation"] = {k: torch.cat([v, added[k]]) for k, v in splits["validation"].items()}
    return splits
STEPS = {"digits": (240, 60), "minilm": (100, 80), "minilm3": (100, 80)}  # (dense pretrain, post-dense window) steps


def task_steps(name: str, smoke: bool, scale: float) -> tuple[int, int]:
    """(dense pretrain steps, window steps) of a task; ``--scale`` multiplies both, smoke runs 3 + 4."""
    dense, window = STEPS[name]
    return (3, 4) if smoke else (round(dense * scale), round(window * scale))


_TASK_CACHE: dict = {}


def get_task(name: str, smoke: bool, scale: float, layers: int = DIGITS_LAYERS) -> Task:
    key = (name, smoke, scale, layers)
    if key not in _TASK_CACHE:
        _TASK_CACHE[key] = digits_task(smoke, scale, layers) if name == "digits" else TASKS[name](smoke, scale)
    return _TASK_CACHE[key]


def pretrain_job(job: dict) -> dict:
    """Dense stage of one (task, seed): train, save the state dict to ``job['path']``, return its accuracies.

    With ``job['reuse']`` (``--dense-cache``) a checkpoint already at ``job['path']`` with its record beside it
    (``.json``) is used as is: adding rows to a finished run does not repeat its dense stage. A record whose task
    sizes (`task_sizes`) differ from this run's raises instead: its checkpoint is another dense model."""
    record_path = Path(job["path"]).with_suffix(".json")
    task = get_task(job["task"], job["smoke"], job["scale"], job["layers"])
    sizes = task_sizes(task)
    if job.get("reuse") and Path(job["path"]).exists() and record_path.exists():
        cached = json.loads(record_path.read_text())
        if cached.get("task_sizes", sizes) != sizes:  # older records carry none: trusted by name
            raise ValueError(
                f"--dense-cache: {job['path']} was trained with {cached['task_sizes']}, this run's task has "
                f"{sizes}; delete that checkpoint and its .json (or pass another --dense-cache folder) to retrain it."
            )
        return {**cached, "path": job["path"], "cached": True}
    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    model = task.build_model(job["seed"])
    if task.dense_steps > 0:
        train_steps(model, task, job["seed"], task.dense_steps, weight_groups(model, task.weight_decay))
    torch.save(model.state_dict(), job["path"])
    record = {
        **{k: v for k, v in job.items() if k not in ("path", "reuse")},
        "task_sizes": sizes,
        "val_acc": accuracy(model, task.splits["validation"], task.eval_batch),
        "test_acc": accuracy(model, task.splits["test"], task.eval_batch),
        "seconds": time.perf_counter() - start,
    }
    # written last, and whole (a rename): a checkpoint without its record, or a half-written one, is never reused
    staging = record_path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(record))
    os.replace(staging, record_path)
    return {**record, "path": job["path"]}


def task_sizes(task: Task) -> dict:
    """What a dense checkpoint depends on beyond its file name: steps, optimiser settings and split sizes (for the
    tweets, the sizes drawn before the train split: validation tweets drawn after it change no training data)."""
    splits = task.extra.get("draw_sizes") or {name: len(split["labels"]) for name, split in task.splits.items()}
    return {"dense_steps": task.dense_steps, "batch_size": task.batch_size, "lr": task.lr, "warmup": task.warmup,
            "weight_decay": task.weight_decay, "splits": splits}  # fmt: skip


def make_method(name: str, spec, variant: dict):
    if name == "dense":
        return DenseMethod()
    if name == "smart":
        options = {k: v for k, v in variant.items() if k != "distill"}
        return SmartMethod(spec, **options)
    if name == "smart_frozen":
        return SmartMethod(spec, frozen=True)
    return BASELINES[name](spec)


def window_job(job: dict) -> dict:
    """One result row (runs in a worker process)."""
    torch.set_num_threads(job["threads"])
    task = get_task(job["task"], job["smoke"], job["scale"], job["layers"])
    spec = parse_pattern(job["pattern"]) if job["pattern"] else None
    dense_state = torch.load(job["dense_path"], weights_only=True)
    start = time.perf_counter()
    try:
        row = run_window(
            task,
            dense_state,
            job["seed"],
            spec,
            make_method(job["method"], spec, job["variant"]),
            distill=job["variant"].get("distill", 0.0),
        )
    except Exception as error:  # one broken baseline must not lose the whole run: record why it failed
        row = {"error": f"{type(error).__name__}: {error}"}
    row["seconds"] = time.perf_counter() - start
    return {k: v for k, v in job.items() if k not in ("dense_path",)} | row


def build_jobs(args, dense_paths: dict) -> list[dict]:
    """Every (task, seed, pattern, method[, ablation]) row; MiniLM first (its rows are the longest)."""
    jobs = []
    base = {"smoke": args.smoke, "scale": args.scale, "threads": args.threads, "layers": args.digits_layers}
    for task in sorted(args.tasks, key=lambda t: not t.startswith("minilm")):
        text = task.startswith("minilm")
        patterns = args.patterns or (
            DIGITS_PATTERNS_ALL if args.smoke else MINILM_PATTERNS if text else DIGITS_PATTERNS
        )
        methods = (
            args.methods
            if args.methods is not None
            else {
                (True, True): MINILM_METHODS_ALL,
                (True, False): METHODS,
                (False, True): MINILM_METHODS,
                (False, False): DEFAULT_METHODS,
            }[(args.smoke, text)]
        )
        seeds = args.seeds if task == "digits" else args.seeds[: args.minilm_seeds]
        for seed in seeds:
            common = {**base, "task": task, "seed": seed, "dense_path": dense_paths[(task, seed)], "variant": {}}
            if "dense" in methods:
                jobs.append({**common, "pattern": None, "method": "dense", "ablation": None})
            for key in patterns:
                for method in methods:
                    if method != "dense" and applicable(method, parse_pattern(key)):
                        jobs.append({**common, "pattern": key, "method": method, "ablation": None})
            if task in args.ablation_tasks and args.ablations and seed in args.seeds[: args.ablation_seeds]:
                for key in args.ablation_patterns:
                    for label in args.ablation_names:
                        variant = ABLATIONS[label]
                        jobs.append(
                            {**common, "pattern": key, "method": "smart", "ablation": label, "variant": variant}
                        )
    return jobs


def run_all(args) -> tuple[list, list]:
    """Pretrain every (task, seed), then every window job, on ``args.workers`` processes."""
    if args.dense_cache:  # kept: a later run with the same sizes and threads reuses them
        Path(args.dense_cache).mkdir(parents=True, exist_ok=True)
        return _run_in(args.dense_cache, args)
    with tempfile.TemporaryDirectory(prefix="bench_quality_") as tmp:  # the cached dense checkpoints
        return _run_in(tmp, args)


def dense_checkpoint_name(task: str, seed: int, args) -> str:
    """Everything the dense stage depends on: the thread count too (it changes the float sums, hence the run)."""
    smoke = "_smoke" if args.smoke else ""
    return f"{task}_s{seed}_scale{args.scale:g}_layers{args.digits_layers}_t{args.threads}{smoke}.pt"


def _run_in(tmp: str, args) -> tuple[list, list]:
    import multiprocessing as mp

    pre_jobs = []
    for task in args.tasks:
        for seed in args.seeds if task == "digits" else args.seeds[: args.minilm_seeds]:
            path = os.path.join(tmp, dense_checkpoint_name(task, seed, args))
            pre_jobs.append(
                {
                    "task": task,
                    "seed": seed,
                    "path": path,
                    "smoke": args.smoke,
                    "scale": args.scale,
                    "layers": args.digits_layers,
                    "threads": args.threads,
                    "reuse": bool(args.dense_cache),
                }
            )
    # spawn: fresh workers that build their own models and data (no forked torch thread pools)
    pool_context = mp.get_context("spawn").Pool(args.workers) if args.workers > 1 else _NoPool()
    with pool_context as pool:
        pretrained = list(pool.imap_unordered(pretrain_job, pre_jobs))
        for p in pretrained:
            _journal(args.out, {"pretrain": {k: v for k, v in p.items() if k != "path"}})
        for p in pretrained:
            print(
                f"[pretrain] {p['task']} seed {p['seed']}: val {p['val_acc']:.4f} test {p['test_acc']:.4f} "
                f"({p['seconds']:.0f}s{', reused from --dense-cache' if p.get('cached') else ''})",
                flush=True,
            )
        jobs = build_jobs(args, {(p["task"], p["seed"]): p["path"] for p in pretrained})
        rows = []
        for i, row in enumerate(pool.imap_unordered(window_job, jobs)):
            rows.append(row)
            _journal(args.out, {"row": row})
            status = row.get("error") or f"test {row['test_acc']:.4f} sparsity {row['sparsity']:.3f}"
            print(
                f"[{i + 1}/{len(jobs)}] {row['task']} s{row['seed']} {row['pattern']} {row['method']} "
                f"{row['ablation'] or ''} {status} ({row['seconds']:.0f}s)",
                flush=True,
            )
    return pretrained, rows


def _journal(out: str, record: dict) -> None:
    """Append one record to ``<out>.journal.jsonl``: a run cut short can still be summarised (--from-journal)."""
    with open(out + ".journal.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _row_key(row: dict) -> tuple:
    return row["task"], row["seed"], row["pattern"], row["method"], row["ablation"]


def read_journal(path: str) -> tuple[list, list]:
    """(pretrain records, result rows) of a journal written by ``_journal``."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["pretrain"] for r in records if "pretrain" in r], [r["row"] for r in records if "row" in r]


class _NoPool:
    """In-process stand-in for ``multiprocessing.Pool`` (``--workers 1``: easier to debug, no spawn cost)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def imap_unordered(self, fn, items):
        return map(fn, items)


def main(argv=None) -> int:

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["digits", "minilm"], choices=sorted(TASKS))
    parser.add_argument("--patterns", nargs="+", default=None, help="e.g. block4x4@0.5 channel@0.3 nm2:4")
    parser.add_argument(
        "--methods",
        nargs="*",
        default=None,
        choices=METHODS,
        help="default: the task's matrix; given with no names, only the ablations run (their dense pre-train too)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--minilm-seeds", type=int, default=3, help="MiniLM uses the first this many seeds")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count (dense and window)")
    parser.add_argument("--no-ablations", dest="ablations", action="store_false")
    parser.add_argument("--ablation-seeds", type=int, default=5, help="ablations use the first this many seeds")
    parser.add_argument("--ablation-patterns", nargs="+", default=None, help=f"default {ABLATION_PATTERNS}")
    parser.add_argument("--ablation-tasks", nargs="+", default=["digits"], choices=sorted(TASKS))
    parser.add_argument("--digits-layers", type=int, default=DIGITS_LAYERS, help="ViT blocks of the digits task")
    parser.add_argument(
        "--ablation-names", nargs="+", default=None, choices=list(ABLATIONS), help=f"default {DEFAULT_ABLATIONS}"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny models, a few steps, one seed")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument(
        "--dense-cache",
        default=None,
        help="keep the dense checkpoints in this folder and reuse them in later runs with the same sizes and "
        "threads (default: a temporary folder, deleted at the end); a checkpoint whose recorded steps, optimiser "
        "settings or split sizes differ from the run's stops it with an error; delete the folder after changing "
        "the dense stage's code",
    )
    parser.add_argument("--out", default="docs/results/quality/quality.json")
    parser.add_argument("--plot", default=None, help="PNG path (default: --out with .png)")
    parser.add_argument("--from-journal", nargs="+", default=None, help="summarise these journals; no training")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds = args.seeds[:1]
    args.ablation_names = args.ablation_names or (SMOKE_ABLATIONS if args.smoke else DEFAULT_ABLATIONS)
    args.ablation_patterns = args.ablation_patterns or (ABLATION_PATTERNS[:1] if args.smoke else ABLATION_PATTERNS)
    for key in args.patterns or []:
        parse_pattern(key)  # fail fast on a typo, before any training
    start = time.perf_counter()
    if args.from_journal:
        records = [read_journal(path) for path in args.from_journal]
        pretrained, rows = [p for r in records for p in r[0]], [row for r in records for row in r[1]]
        rows = list({_row_key(row): row for row in reversed(rows)}.values())[::-1]  # a repeated row counts once
        pretrained = list({(p["task"], p["seed"]): p for p in reversed(pretrained)}.values())[::-1]
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".journal.jsonl").unlink(missing_ok=True)
        pretrained, rows = run_all(args)
    summary = summarise(rows)
    payload = {
        **result_header(
            "quality", args.smoke, argv, environment(workers=args.workers, threads_per_worker=args.threads)
        ),
        "sizes": {t: dict(zip(("dense_steps", "window"), task_steps(t, args.smoke, args.scale))) for t in TASKS},
        "pretrain": [{k: v for k, v in p.items() if k != "path"} for p in pretrained],
        "rows": rows,
        "summary": summary,
        "wall_seconds": time.perf_counter() - start,
    }
    write_outputs(payload, args.out, args.plot or str(Path(args.out).with_suffix(".png")))
    print(f"wall {payload['wall_seconds']:.0f}s; wrote {args.out}")
    return 1 if any("error" in r for r in rows) else 0
