"""SMART pruning of a causal LM with TRL's SFTTrainer and SmartCallback, driven by one YAML recipe.

    python examples/sft_causal_lm.py recipes/trl/smollm2_135m_2of4_sft.yaml               # NEEDS THE HUB
    python examples/sft_causal_lm.py recipes/trl/smollm2_135m_2of4_sft.yaml --max_steps 20  # any field on the CLI

The recipe holds the fields of three dataclasses: `ScriptArguments` (model, data, optional LoRA), `SmartConfig`
(what and how to prune) and TRL's `SFTConfig` (training; its default keeps gradient checkpointing on, which SMART
supports). At the end of training SmartCallback writes the pruned, stock-loadable model to ``<output_dir>/pruned``
and verifies its sparsity. With ``use_lora: true`` the base is pruned while LoRA adapters train
(`smart_hf.integrations.peft`); the script then merges them keeping the sparsity and saves to ``<output_dir>/pruned``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import yaml
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser
from trl import SFTConfig, SFTTrainer

import smart_hf as sh
from smart_hf import SmartCallback
from smart_hf.integrations.peft import get_peft_model, merge_and_unload


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "Hub id or local folder of a causal LM."})
    dataset_name: str = field(metadata={"help": "Dataset for datasets.load_dataset (a Hub id, or 'json' / 'csv')."})
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split (slices allowed: 'train[:20000]')."})
    data_files: str | None = field(default=None, metadata={"help": "Local files for dataset_name='json' / 'csv'."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters while SMART prunes the base."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (use_lora)."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Modules that get LoRA adapters (use_lora)."},
    )


def parse(argv: list[str]) -> tuple[ScriptArguments, sh.SmartConfig, SFTConfig]:
    """``argv[0]``: the recipe YAML; the rest override its fields (``--name value``)."""
    if not argv or not argv[0].endswith((".yaml", ".yml")):
        raise SystemExit(f"usage: {os.path.basename(sys.argv[0])} RECIPE.yaml [--field value ...]")
    with open(argv[0], encoding="utf-8") as fh:
        recipe = yaml.safe_load(fh)
    args = []
    for key, value in recipe.items():
        args += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    parser = HfArgumentParser((ScriptArguments, sh.SmartConfig, SFTConfig))
    return parser.parse_args_into_dataclasses(args=args + list(argv[1:]))


def main(argv: list[str] | None = None) -> str:
    script, smart_config, sft_config = parse(sys.argv[1:] if argv is None else argv)
    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    data = load_dataset(
        script.dataset_name, script.dataset_config, split=script.dataset_split, data_files=script.data_files
    )
    model = sh.prepare_model(model, smart_config)
    if script.use_lora:
        from peft import LoraConfig  # optional: only this path needs peft

        model = get_peft_model(model, LoraConfig(r=script.lora_r, target_modules=script.lora_target_modules))
    callback = SmartCallback()
    trainer = SFTTrainer(
        model=model, args=sft_config, train_dataset=data, processing_class=tokenizer, callbacks=[callback]
    )
    trainer.train()
    pruned_dir = os.path.join(sft_config.output_dir, "pruned")
    if script.use_lora:
        merged = merge_and_unload(model)
        sh.save_pruned(
            merged, pruned_dir, processing_class=tokenizer, log_history=trainer.state.log_history, replace_folder=True
        )
    print(sh.format_report(sh.check_sparsity(pruned_dir)))
    return pruned_dir


if __name__ == "__main__":
    main()
