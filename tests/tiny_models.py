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
    ResNetConfig,
    ResNetForImageClassification,
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
