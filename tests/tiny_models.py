"""Tiny transformers models built from configs (no Hub access) and matching input batches, shared by the core tests.

Module names in transformers 5 (printed with ``named_modules()``):

* ViT: ``vit.embeddings.patch_embeddings.projection`` (Conv2d), ``vit.layers.N.attention.{q,k,v,o}_proj``,
  ``vit.layers.N.mlp.fc1/fc2``, ``classifier``.
* BERT: ``bert.embeddings.*`` (Embedding), ``bert.encoder.layer.N.attention.self.query`` ...,
  ``bert.pooler.dense``, ``classifier``.
* GPT-2: ``transformer.h.N.attn.c_attn`` ... (transformers ``Conv1D``, weight stored ``(in, out)``), ``lm_head``.
* ResNet: ``resnet.embedder.embedder.convolution`` and ``resnet.encoder.stages.S.layers.0.layer.I.convolution``
  (Conv2d), ``classifier.1``.
"""

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DeiTConfig,
    DeiTForImageClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ResNetConfig,
    ResNetForImageClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    ViTConfig,
    ViTForImageClassification,
)

# One tiny vision-transformer geometry for ViT and DeiT (16x16 images, patch 4, 3 classes).
_TINY_VISION = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4, num_labels=3
)


def tiny_vit(intermediate_size: int = 64):
    return ViTForImageClassification(ViTConfig(intermediate_size=intermediate_size, **_TINY_VISION))


def tiny_deit():
    return DeiTForImageClassification(DeiTConfig(intermediate_size=64, **_TINY_VISION))


def tiny_bert():
    return BertForSequenceClassification(
        BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            num_labels=3,
        )
    )


def tiny_roberta():
    """RoBERTa, 3 classes (40 positions: its position ids start after the padding index)."""
    return RobertaForSequenceClassification(
        RobertaConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=40,
            num_labels=3,
        )
    )


def tiny_gpt2():
    return GPT2LMHeadModel(
        GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    )


def tiny_resnet():
    return ResNetForImageClassification(
        ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)
    )


def vit_inputs(batch: int = 2):
    return {"pixel_values": torch.randn(batch, 3, 16, 16)}


def text_inputs(batch: int = 2):
    return {"input_ids": torch.randint(0, 100, (batch, 8))}


def resnet_inputs(batch: int = 2):
    return {"pixel_values": torch.randn(batch, 3, 32, 32)}


# name -> (factory, inputs, stock Auto class)
MODELS = {
    "vit": (tiny_vit, vit_inputs, AutoModelForImageClassification),
    "bert": (tiny_bert, text_inputs, AutoModelForSequenceClassification),
    "gpt2": (tiny_gpt2, text_inputs, AutoModelForCausalLM),
    "resnet": (tiny_resnet, resnet_inputs, AutoModelForImageClassification),
}


def tiny_llama():
    """Llama-style decoder: gate/up/down MLP, grouped-query attention (4 query heads, 2 key/value heads), tied
    input/output embeddings."""
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=True,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
        )
    )


def tiny_tokenizer():
    """A word-level tokenizer over ``w0 .. w96`` plus pad/eos/unk (ids 0, 1, 2), built in memory (no Hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>"] + [f"w{i}" for i in range(97)])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def text_dataset(n: int = 32, words: int = 12):
    """``n`` random sentences of ``tiny_tokenizer`` words in a ``text`` column (what TRL's SFTTrainer takes)."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 97, (n, words), generator=g)
    return Dataset.from_dict({"text": [" ".join(f"w{int(i)}" for i in row) for row in ids]})


def lm_dataset(n: int = 16, length: int = 8):
    """Tokenised causal-LM examples (``input_ids`` = ``labels``) for the stock Trainer."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 100, (n, length), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}).with_format("torch")
