"""FilaProcessor: saved and loaded the transformers way, and its chat template gives the ids generation uses."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig

from fila_train.demo.tokenizer import build_demo_tokenizer
from fila_train.model.configuration import FilaConfig
from fila_train.processing.processor import FilaProcessor

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = ("plain", "vicuna_v1", "llama3", "chatml")


def tiny_config(template: str, encoder: str = "clip") -> FilaConfig:
    vision = CLIPVisionConfig(image_size=28, patch_size=14, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                              num_attention_heads=2)
    text = LlamaConfig(vocab_size=400, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    return FilaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), vision_encoder=encoder,
                      conversation_template=template)


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("processor_tok")
    corpus = root / "corpus.txt"
    corpus.write_text("What is written here? The total is 42.\nA chart of sales in paris.\n" * 50)
    build_demo_tokenizer([corpus], root / "tokenizer", vocab_size=400)
    return root / "tokenizer"


CASES = [(template, encoder) for template in TEMPLATES for encoder in ("clip", "fila_hybrid")]
# One fresh interpreter for every saved folder (each start pays ~20 s of imports): only `import fila_train`
# may make AutoProcessor know the folders.
SERVE = """import json, sys, fila_train
from PIL import Image
from transformers import AutoProcessor
image = Image.open(sys.argv[1])
for folder in sys.argv[2:]:
    p = AutoProcessor.from_pretrained(folder)
    m = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What is written here?"}]}]
    out = p.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)
    print(json.dumps({"folder": folder, "class": type(p).__name__, "ids": out["input_ids"][0]}))
"""


@pytest.fixture(scope="module")
def served(tokenizer_folder, tmp_path_factory):
    """Per case: the saved processor, and what AutoProcessor in a fresh interpreter made of its folder."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("served")
    image = root / "image.png"
    Image.new("RGB", (61, 37), (200, 30, 30)).save(image)
    processors = {}
    for template, encoder in CASES:
        processor = FilaProcessor.for_model(AutoTokenizer.from_pretrained(tokenizer_folder), tiny_config(template, encoder))
        processor.save_pretrained(root / f"{template}-{encoder}")
        processors[template, encoder] = processor
    run = subprocess.run([sys.executable, "-c", SERVE, str(image), *(str(root / f"{t}-{e}") for t, e in CASES)],
                         capture_output=True, text=True, cwd=REPO, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.strip().splitlines() if line.startswith("{")]
    return image, root, processors, {Path(line["folder"]).name: line for line in lines}


@pytest.mark.parametrize(("template", "encoder"), CASES)
def test_saved_processor_loads_with_autoprocessor_and_its_chat_template_gives_the_generation_ids(
        served, template, encoder):
    image, root, processors, results = served
    processor = processors[template, encoder]
    assert (root / f"{template}-{encoder}" / "chat_template.jinja").read_text() == processor.chat_template
    result = results[f"{template}-{encoder}"]
    assert result["class"] == "FilaProcessor"
    # What `fila-train generate` builds (inference.generation.build_prompt) for that question and image.
    encoder_processor = processor.image_processor.encoder_processor
    count = encoder_processor.num_image_tokens(encoder_processor(Image.open(image).convert("RGB")))
    expected = processor.conversations.encode([{"from": "human", "value": "<image>\nWhat is written here?"}],
                                              [count], add_generation_prompt=True)
    assert result["ids"] == expected.input_ids


def test_a_prompt_with_more_placeholders_than_images_is_refused(tokenizer_folder):
    from transformers import AutoTokenizer

    processor = FilaProcessor.for_model(AutoTokenizer.from_pretrained(tokenizer_folder), tiny_config("vicuna_v1"))
    with pytest.raises(ValueError, match="more '<image>' placeholders than the 0 image"):
        processor(text="<image> hi")


@pytest.mark.parametrize("kwargs", [{"truncation": True, "max_length": 4}, {"padding": "max_length", "max_length": 64},
                                    {"pad_to_multiple_of": 8}, {"padding_side": "right"}])
def test_tokenizer_options_the_processor_does_not_apply_are_refused(tokenizer_folder, kwargs):
    """Before, truncation, max-length padding and the padding side were accepted and ignored: the ids came back
    whole and left-padded, unsaid. The options it does apply (return_tensors, padding to the longest) stand."""
    from transformers import AutoTokenizer

    processor = FilaProcessor.for_model(AutoTokenizer.from_pretrained(tokenizer_folder), tiny_config("vicuna_v1"))
    prompts = ["USER: a long prompt of several words ASSISTANT:", "USER: hi ASSISTANT:"]
    with pytest.raises(ValueError, match=f"FilaProcessor does not apply ({'|'.join(kwargs)})="):
        processor(text=prompts, return_tensors="pt", **kwargs)
    padded = processor(text=prompts, return_tensors="pt", padding=True, truncation="do_not_truncate",
                       add_special_tokens=False)
    assert padded["input_ids"].shape[0] == 2 and padded["attention_mask"][1, 0] == 0  # left-padded


@pytest.mark.parametrize("template", TEMPLATES)
def test_messages_with_content_parts_render_as_their_string_form(tokenizer_folder, template):
    """The llava-hf / OpenAI message format (content as a list of parts) for every role, as servers send it."""
    from transformers import AutoTokenizer

    processor = FilaProcessor.for_model(AutoTokenizer.from_pretrained(tokenizer_folder), tiny_config(template))
    as_strings = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is it?"},
                  {"role": "assistant", "content": "A chart."}, {"role": "user", "content": "The total?"}]
    as_parts = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "A chart."}]},
                {"role": "user", "content": [{"type": "text", "text": "The total?"}]}]
    rendered = processor.apply_chat_template(as_parts, add_generation_prompt=True)
    assert rendered == processor.apply_chat_template(as_strings, add_generation_prompt=True)


def test_model_inputs_move_to_a_dtype_images_included(tokenizer_folder):
    import torch
    from transformers import AutoTokenizer

    processor = FilaProcessor.for_model(AutoTokenizer.from_pretrained(tokenizer_folder), tiny_config("vicuna_v1"))
    batch = processor(text=["<image> a", "b"], images=[Image.new("RGB", (30, 20))], return_tensors="pt")
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1, 0] == 0  # left-padded
    moved = batch.to(torch.float16)
    assert moved["images"]["pixel_values"].dtype == torch.float16 and moved["input_ids"].dtype == torch.long


def test_a_saved_chat_template_that_differs_from_the_training_template_is_reported(tokenizer_folder, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    with caplog.at_level("WARNING"):
        FilaProcessor(FilaProcessor.for_model(tokenizer, tiny_config("chatml")).image_processor, tokenizer,
                      chat_template="{{ messages[0]['content'] }}", conversation_template="chatml")
    assert "differs from template 'chatml'" in caplog.text


def test_save_pretrained_with_push_to_hub_uploads_the_tokenizer_settings_it_writes_back(monkeypatch, tmp_path):
    """save_pretrained(push_to_hub=True) uploaded the folder from inside transformers' save, before the tokenizer's
    legacy=True was written back: the hub copy then read back legacy=False, "</s>USER" one token fewer than
    training. The hub is replaced by its two calls here; what would be uploaded is read as it is handed over."""
    from huggingface_hub import HfApi
    from transformers import LlamaTokenizer
    from transformers.utils.hub import PushToHubMixin

    from distributed_utils import LLAMA2_DIR

    if not (LLAMA2_DIR / "tokenizer.model").is_file():
        pytest.skip(f"no Llama-2 SentencePiece tokenizer at {LLAMA2_DIR}")
    uploaded = {}

    def upload(self, folder, repo_id, *args, **kwargs):
        uploaded[repo_id] = json.loads((Path(folder) / "tokenizer_config.json").read_text())

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: type("Url", (), {"repo_id": repo_id}))
    monkeypatch.setattr(PushToHubMixin, "_upload_modified_files", upload)
    monkeypatch.setattr("transformers.utils.hub.create_and_tag_model_card",
                        lambda *args, **kwargs: type("Card", (), {"save": lambda self, path: None})())
    tokenizer = LlamaTokenizer.from_pretrained(str(LLAMA2_DIR), legacy=True)
    processor = FilaProcessor.for_model(tokenizer, tiny_config("vicuna_v1"))
    processor.save_pretrained(str(tmp_path / "local"), push_to_hub=True, repo_id="me/fila")
    assert json.loads((tmp_path / "local" / "tokenizer_config.json").read_text())["legacy"] is True
    assert uploaded["me/fila"]["legacy"] is True


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
def test_a_question_with_its_image_last_is_trained_and_served_with_the_image_first(tokenizer_folder, template):
    """LLaVA (and LLaVA-NeXT) move a turn's one <image> to its front before training (preprocess_multimodal), and
    LLaVA-665K holds image-last questions ("What is this photo about'?\\n<image>"). Before, they were trained
    image-last, while generate, eval and lmms-eval put the image first; and a served message whose parts are
    [text, image] (OpenAI's order) rendered image-last too."""
    from transformers import AutoTokenizer

    processor = FilaProcessor.for_model(AutoTokenizer.from_pretrained(tokenizer_folder), tiny_config(template))
    first = [{"from": "human", "value": "<image>\nWhat is written here?"}, {"from": "gpt", "value": "42"}]
    for value in ("What is written here?\n<image>", "What is written here? <image>", "What is <image> written here?"):
        last = [{"from": "human", "value": value}, {"from": "gpt", "value": "42"}]
        if "<image> written" in value:  # moved as LLaVA moves it: the text around it joins with nothing between
            first[0]["value"] = "<image>\nWhat is  written here?"
        encode = processor.conversations.encode
        assert encode(last, [3]).input_ids == encode(first, [3]).input_ids
    served = [[{"type": "text", "text": "What is written here?"}, {"type": "image"}],
              [{"type": "image"}, {"type": "text", "text": "What is written here?"}]]
    assert len({processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True,
                                              tokenize=False) for parts in served}) == 1
    two = [{"from": "human", "value": "Compare <image> and <image>"}, {"from": "gpt", "value": "42"}]
    assert "Compare <image> and <image>" in processor.conversations.render(two)[0].text  # several: as written
