"""Run by tests/test_export.py in an isolated environment with an older transformers (never the lockfile's):
load a --format llava folder as LLaVA-era stacks do, prompt it through its chat template, save the logits.

usage: llava_load_check.py FOLDER IMAGE OUTPUT.safetensors  (prints one JSON line)
"""
import json
import sys

import torch
import transformers
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

folder, image_path, output = sys.argv[1:4]
model, info = LlavaForConditionalGeneration.from_pretrained(folder, torch_dtype=torch.float32,
                                                            output_loading_info=True)
processor = AutoProcessor.from_pretrained(folder)
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is written here?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
# The template writes BOS itself (as transformers 5's apply_chat_template(tokenize=True) also accounts for).
inputs = processor(images=Image.open(image_path).convert("RGB"), text=prompt, return_tensors="pt",
                   add_special_tokens=False)
with torch.no_grad():
    logits = model(**inputs).logits
save_file({"logits": logits.contiguous(), "input_ids": inputs["input_ids"].contiguous(),
           "pixel_values": inputs["pixel_values"].contiguous()}, output)
print(json.dumps({"transformers": transformers.__version__, "prompt": prompt,
                  "processor": type(processor).__name__, "image_processor": type(processor.image_processor).__name__,
                  "tokenizer_has_chat_template": processor.tokenizer.chat_template is not None,
                  "loading": {key: sorted(map(str, value)) for key, value in info.items()}}))
