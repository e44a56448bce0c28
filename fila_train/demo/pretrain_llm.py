"""Give the tiny demo LLM some language before the VLM stages, as a real run starts from Vicuna.

A frozen random LLM cannot be steered by the connector, so stage 1 would barely move. A few
hundred causal-LM steps on the demo's question/answer text (captions held out, so stage 1
still has something to align) make the demo behave like the real two-stage recipe.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)


def _packed_batches(ids: list[int], seq_len: int, batch: int, rng: random.Random):
    starts = list(range(0, len(ids) - seq_len - 1, seq_len))
    while True:
        rng.shuffle(starts)
        for i in range(0, len(starts) - batch + 1, batch):
            yield torch.tensor([ids[s:s + seq_len] for s in starts[i:i + batch]])


def pretrain_tiny_llm(llm_dir: str | Path, texts: list[str], steps: int = 150, seq_len: int = 64,
                      batch: int = 16, learning_rate: float = 3e-3, seed: int = 0) -> list[float]:
    """Train the saved LLM in ``llm_dir`` on ``texts`` in place; returns the loss per step."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir)
    eos = [tokenizer.eos_token_id]
    ids = [token for text in texts for token in tokenizer(text).input_ids + eos]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    batches = _packed_batches(ids, seq_len, batch, random.Random(seed))
    losses = []
    model.train()
    for _ in range(steps):
        inputs = next(batches)
        loss = model(input_ids=inputs, labels=inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.save_pretrained(llm_dir)
    logger.info("pre-trained the demo LLM: loss %.3f -> %.3f over %d steps", losses[0], losses[-1], steps)
    return losses
