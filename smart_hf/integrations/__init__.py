"""Integrations with other libraries of the Hugging Face ecosystem (`smart_hf.integrations.peft`: LoRA)."""
