"""Image features land exactly in the image-context positions; tiny LLM families build and round-trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fila_train.data.collator import ConversationCollator
from fila_train.data.dataset import ConversationDataset, DatasetOptions
from fila_train.processing.chat_templates import get_template
from fila_train.processing.conversations import IGNORE_INDEX
from fila_train.processing.tokenization import ConversationTokenizer
from fila_train.demo.tiny_models import save_tiny_clip, save_tiny_llm
from fila_train.demo.tokenizer import build_demo_tokenizer
from fila_train.model.builder import build_model
from fila_train.model.modeling import FilaForConditionalGeneration

FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
IMAGE_COLORS = ((220, 20, 20), (20, 220, 20), (20, 20, 220), (128, 128, 0))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("scatter")
    corpus = root / "corpus.txt"
    corpus.write_text("What is in the image? A red square. USER: ASSISTANT: green blue.\n" * 50)
    tokenizer = build_demo_tokenizer([corpus], root / "tokenizer", vocab_size=300)
    clip = save_tiny_clip(root / "clip", image_size=28, patch_size=14, hidden_size=32, num_layers=2)
    llms = {family: save_tiny_llm(root / family, tokenizer, family=family, hidden_size=64, num_layers=2, seed=1)
            for family in FAMILIES}
    return {"root": root, "tokenizer": tokenizer, "clip": clip, "llms": llms}


@pytest.fixture(scope="module")
def model(assets: dict) -> FilaForConditionalGeneration:
    torch.manual_seed(0)  # the connector is freshly initialised
    return build_model(str(assets["llms"]["llama"]), str(assets["clip"])).eval()


def images_of(model: FilaForConditionalGeneration, colors) -> dict:
    processor = model.image_processor()
    return processor.collate([processor(Image.new("RGB", (40, 30), color)) for color in colors])


def expected_embeddings(model: FilaForConditionalGeneration, input_ids: torch.Tensor,
                        features: torch.Tensor) -> torch.Tensor:
    """Reference scatter, position by position: the k-th image position (row-major) gets feature k."""
    table = model.get_input_embeddings().weight
    out = torch.empty(*input_ids.shape, table.shape[1])
    next_feature = 0
    for row in range(input_ids.shape[0]):
        for position, token in enumerate(input_ids[row].tolist()):
            if token == model.config.image_token_id:
                out[row, position] = features[next_feature]
                next_feature += 1
            else:
                out[row, position] = table[token]
    assert next_feature == features.shape[0]
    return out


def tokens_per_image(model: FilaForConditionalGeneration) -> int:
    return model.image_processor().tokens_per_view


# ------------------------------------------------------------------------------------------------
# scatter
# ------------------------------------------------------------------------------------------------
def test_features_land_exactly_in_image_positions(model: FilaForConditionalGeneration) -> None:
    n, img = tokens_per_image(model), model.config.image_token_id
    input_ids = torch.tensor([
        [11, 12] + [img] * n + [13] + [img] * n + [14, 15],    # two images, text between and around
        [img] * n + [16, 17, 18, 19] + [img] * n + [21],       # starts with an image
    ])
    images = images_of(model, IMAGE_COLORS)
    with torch.no_grad():
        features = model.encode_images(images)
        embeds = model.embed(input_ids, images)
    assert features.shape == (4 * n, model.config.text_config.hidden_size)
    for a in range(4):  # distinct images give distinct features, so a wrong order cannot pass
        for b in range(a + 1, 4):
            assert not torch.allclose(features[a * n:(a + 1) * n], features[b * n:(b + 1) * n])
    torch.testing.assert_close(embeds, expected_embeddings(model, input_ids, features), rtol=0, atol=0)


def test_count_mismatch_is_a_clear_error(model: FilaForConditionalGeneration) -> None:
    n, img = tokens_per_image(model), model.config.image_token_id
    images = images_of(model, IMAGE_COLORS[:1])
    for positions in (n - 1, n + 1, 2 * n):
        input_ids = torch.tensor([[5] + [img] * positions + [6]])
        with pytest.raises(ValueError, match=f"{positions} image-context positions .* {n} feature vectors"):
            model.embed(input_ids, images)
    with pytest.raises(ValueError, match="no images were given"):
        model.embed(torch.tensor([[5] + [img] * n]), None)


def dataset_batch(assets: dict, model: FilaForConditionalGeneration, records: list[dict], tmp_path: Path) -> dict:
    """Records -> the real dataset (vicuna_v1) -> the real collator."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    for index, color in enumerate(IMAGE_COLORS):
        Image.new("RGB", (40, 30), color).save(folder / f"{index}.png")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    tokenizer = assets["tokenizer"]
    processor = model.image_processor()
    dataset = ConversationDataset(
        path, folder, ConversationTokenizer(tokenizer, get_template("vicuna_v1"), model.config.image_token_id),
        processor, DatasetOptions(max_length=512))
    return ConversationCollator(tokenizer.pad_token_id, processor)([dataset[i] for i in range(len(dataset))])


def record(record_id: str, images: list[int], answer: str = "A red square.") -> dict:
    out = {"id": record_id, "conversations": [
        {"from": "human", "value": "<image>\n" * len(images) + "What is in the image?"},
        {"from": "gpt", "value": answer}]}
    if images:
        out["image"] = [f"{i}.png" for i in images]
    return out


def test_mixed_image_and_text_batch(assets: dict, model: FilaForConditionalGeneration, tmp_path: Path) -> None:
    records = [record("two", [2, 0]), record("text", [], answer="Green blue green blue."), record("one", [1])]
    batch = dataset_batch(assets, model, records, tmp_path)
    assert batch["images_are_placeholders"] is False
    with torch.no_grad():
        features = model.encode_images(batch["images"])
        embeds = model.embed(batch["input_ids"], batch["images"])
        text_only = model.get_input_embeddings()(batch["input_ids"][1])
    torch.testing.assert_close(embeds, expected_embeddings(model, batch["input_ids"], features), rtol=0, atol=0)
    torch.testing.assert_close(embeds[1], text_only, rtol=0, atol=0)
    # Image order in the batch is record order: row 0 holds images 2 then 0, row 2 holds image 1.
    n = tokens_per_image(model)
    alone = model.encode_images(images_of(model, [IMAGE_COLORS[2], IMAGE_COLORS[0], IMAGE_COLORS[1]]))
    torch.testing.assert_close(features, alone)
    assert features.shape[0] == 3 * n
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                labels=batch["labels"])
    assert torch.isfinite(out.loss)


def test_text_only_batch_embeds_text_and_keeps_connector_in_the_graph(
        assets: dict, model: FilaForConditionalGeneration, tmp_path: Path) -> None:
    batch = dataset_batch(assets, model, [record("a", []), record("b", [], answer="Blue.")], tmp_path)
    assert batch["images_are_placeholders"] is True
    embeds = model.embed(batch["input_ids"], batch["images"], images_are_placeholders=True)
    torch.testing.assert_close(embeds, model.get_input_embeddings()(batch["input_ids"]), rtol=0, atol=0)
    model.zero_grad(set_to_none=True)
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], images=batch["images"],
                    images_are_placeholders=True, labels=batch["labels"])
        out.loss.backward()
        connector = dict(model.connector.named_parameters())
        assert connector and all(p.grad is not None for p in connector.values())
        assert all(torch.count_nonzero(p.grad) == 0 for p in connector.values())  # a zero gradient path
        assert model.get_input_embeddings().weight.grad.abs().sum() > 0  # the text path really trained
    finally:
        model.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------------
# LLM families: build, forward with labels, causal attention, save/load round trip
# ------------------------------------------------------------------------------------------------
def family_model(assets: dict, family: str) -> FilaForConditionalGeneration:
    torch.manual_seed(0)
    return build_model(str(assets["llms"][family]), str(assets["clip"])).eval()


def sample_inputs(model: FilaForConditionalGeneration) -> dict:
    n, img = tokens_per_image(model), model.config.image_token_id
    input_ids = torch.tensor([[1, 20, 21] + [img] * n + [22, 23, 24, 25, 26],
                              [1, 30] + [img] * n + [31, 32, 33, 0, 0, 0]])
    attention_mask = (torch.arange(input_ids.shape[1]) < torch.tensor([[input_ids.shape[1]], [10]])).long()
    labels = torch.where((input_ids == img) | (attention_mask == 0), IGNORE_INDEX, input_ids)
    labels[:, :3] = IGNORE_INDEX
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "images": images_of(model, IMAGE_COLORS[:2])}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_builds_and_trains_on_labels(assets: dict, family: str) -> None:
    model = family_model(assets, family)
    assert type(model.language_model).__name__ == FAMILIES[family]
    assert model.config.text_config.model_type == family
    inputs = sample_inputs(model)
    with torch.no_grad():
        out = model(**inputs)
    # The loss is next-token cross-entropy over exactly the labelled positions.
    labels = inputs["labels"]
    reference = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1),
                                ignore_index=IGNORE_INDEX)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, reference)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_attention_is_causal(assets: dict, family: str) -> None:
    """Changing the last token must not change the logits of any earlier position."""
    model = family_model(assets, family)
    inputs = sample_inputs(model)
    changed = inputs["input_ids"].clone()
    changed[0, -1] = 40
    with torch.no_grad():
        before = model(input_ids=inputs["input_ids"], images=inputs["images"]).logits
        after = model(input_ids=changed, images=inputs["images"]).logits
    assert not torch.equal(before[0, -1], after[0, -1])
    torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=0, atol=0, msg=lambda m: (
        f"earlier positions see a later token, the {family} attention is not causal:\n{m}"))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_round_trips_through_save_pretrained(assets: dict, family: str, tmp_path: Path) -> None:
    model = family_model(assets, family)
    inputs = sample_inputs(model)
    model.save_pretrained(tmp_path / "fila")
    for reloaded in (FilaForConditionalGeneration.from_pretrained(tmp_path / "fila"),
                     build_model(str(tmp_path / "fila"))):  # a saved fila folder loads as is
        reloaded.eval()
        assert type(reloaded.language_model).__name__ == FAMILIES[family]
        with torch.no_grad():
            expected, got = model(**inputs), reloaded(**inputs)
        torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)
