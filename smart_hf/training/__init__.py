"""The Trainer integration: `SmartTrainingArguments` (stage lengths, score learning rate, distillation),
`SmartCallback` (the three stages inside any `transformers.Trainer`, run by the stage driver `smart_hf.SmartStages`)
and `SmartTrainer`."""

from .callbacks import SmartCallback
from .trainer import SmartTrainer
from .training_args import SmartTrainingArguments

__all__ = ["SmartCallback", "SmartTrainer", "SmartTrainingArguments"]
