"""A new vision encoder and a new connector are one module plus one registration each.

Both are defined and registered in this file only, then go through the normal code: flags (with their own
options and sub-part learning rates), a training run, the saved model, the stage-1 artifact, the export with
its model card, and loading the export. Nothing in fila_train names them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPVisionModel

from distributed_utils import tiny_batch
from fila_train.demo.tiny_models import as_cli
from fila_train.export.exporter import ExportOptions, export_checkpoint
from fila_train.model import FilaForConditionalGeneration
from fila_train.model.checkpointing import checkpointable_parts
from fila_train.model.connector import Connector
from fila_train.model.contracts import (CONNECTORS, VISION_ENCODERS, ConnectorContract, SubPart,
                                        VisionEncoderContract)
from fila_train.model.vision.base import VisionOutput
from fila_train.model.vision.clip_encoder import ClipImageProcessor, ClipTowerMixin
from fila_train.training.connector_artifact import load_connector_artifact
from fila_train.training.train import parse_args, train
from fila_train.utils.errors import ConfigError

# ----------------------------------------------------------------------------- the toy encoder


@dataclass
class ToyEncoderOptions:
    pool: int = 2  # average-pool the patch grid by this factor
    scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ToyEncoderOptions:
        return cls(**data)


@dataclass(frozen=True)
class ToyImageProcessor(ClipImageProcessor):
    pool: int = 2

    @property
    def tokens_per_view(self) -> int:
        return (self.image_size // self.patch_size // self.pool) ** 2


class ToyPooledEncoder(ClipTowerMixin, nn.Module):
    """CLIP patch tokens of one layer, average-pooled, plus a learned bias: the sub-part "toy_bias"."""

    def __init__(self, config, tower: CLIPVisionModel | None = None):
        super().__init__()
        self.options = ToyEncoderOptions.from_dict(config.vision_options or {})
        config.vision_options = self.options.to_dict()  # complete: the saved config rebuilds the same encoder
        self.feature_layer = config.vision_feature_layer
        self.clip = tower if tower is not None else CLIPVisionModel._from_config(config.vision_config)
        self.toy_bias = nn.Parameter(torch.zeros(self.clip.config.hidden_size))

    def image_processor(self) -> ToyImageProcessor:
        return ToyImageProcessor(self.config.image_size, self.config.patch_size, pool=self.options.pool)

    def forward(self, images: dict, output_hidden_states: bool = False) -> VisionOutput:
        out = self.clip(pixel_values=images["pixel_values"].to(self.clip.dtype), output_hidden_states=True)
        tokens = out.hidden_states[self.feature_layer][:, 1:]
        views, count, width = tokens.shape
        side = int(count ** 0.5)
        grid = tokens.transpose(1, 2).reshape(views, width, side, side)
        pooled = F.avg_pool2d(grid, self.options.pool).flatten(2).transpose(1, 2)
        return VisionOutput(features=pooled * self.options.scale + self.toy_bias)


TOY_ENCODER = VisionEncoderContract(
    name="toy_pooled", options=ToyEncoderOptions, sub_parts=(SubPart("toy_bias", "toy_bias"),),
    build=ToyPooledEncoder,
    image_processor=lambda vision_config, options=None: ToyImageProcessor(
        vision_config.image_size, vision_config.patch_size, pool=ToyEncoderOptions.from_dict(options or {}).pool),
    card_rows=lambda options: [("toy pooling", f"{options['pool']}x{options['pool']}, scale {options['scale']}")],
)

# ----------------------------------------------------------------------------- the toy connector


@dataclass
class ToyConnectorOptions:
    hidden: int = 16

    def to_dict(self) -> dict:
        return asdict(self)


class ToyMixer(nn.Module):
    """A gated MLP branch that starts closed: its reset_parameters() is its init (the generic one would not
    leave the gate at zero)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.gate = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.up.weight)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate * self.down(F.gelu(self.up(x)))


class ToyGatedConnector(Connector):
    def __init__(self, vision_config, llm_hidden: int, options: dict):
        super().__init__()
        self.options = ToyConnectorOptions(**options)
        self.projector = nn.Linear(vision_config.hidden_size, llm_hidden)
        self.toy_mixer = ToyMixer(llm_hidden, self.options.hidden)

    def stored_options(self) -> dict:
        return self.options.to_dict()

    def forward(self, vision: VisionOutput) -> torch.Tensor:
        projected = self.projector(vision.features)
        return projected + self.toy_mixer(projected)


TOY_CONNECTOR = ConnectorContract(
    name="toy_gated", options=ToyConnectorOptions, sub_parts=(SubPart("toy_mixer", "toy_mixer."),),
    self_initialised=(ToyMixer,), build=ToyGatedConnector,
)

# ----------------------------------------------------------------------------- through the normal code


@pytest.fixture(scope="module")
def registered():
    VISION_ENCODERS.register(TOY_ENCODER)
    CONNECTORS.register(TOY_CONNECTOR)
    yield
    VISION_ENCODERS.unregister(TOY_ENCODER.name)
    CONNECTORS.unregister(TOY_CONNECTOR.name)


def toy_flags(assets, output_dir, **extra) -> list[str]:
    flags = {"model_name_or_path": str(assets.llm), "vision_tower": str(assets.clip), "vision_encoder": "toy_pooled",
             "connector_type": "toy_gated", "data_path": str(assets.stage1_data),
             "image_folder": str(assets.image_folder), "conversation_template": "plain",
             "tune_parts": "connector,toy_bias,toy_mixer", "learning_rate": "1e-2",
             "per_device_train_batch_size": "2", "max_steps": "3", "logging_steps": "1", "save_strategy": "no",
             "model_max_length": "512", "report_to": "none", "seed": "5", "output_dir": str(output_dir)} | extra
    return as_cli(flags) + ["--vision_option", "pool=2", "scale=0.5", "--connector_option", "hidden=8",
                            "--part_lr", "toy_bias=5e-2", "toy_mixer=2e-2"]


@pytest.fixture(scope="module")
def trained(registered, tiny_assets, tmp_path_factory):
    output = tmp_path_factory.mktemp("toy_parts") / "run"
    summary = train(*parse_args(toy_flags(tiny_assets, output)))
    return output, summary


def test_flags_reach_the_toy_parts_options_and_sub_part_learning_rates(registered, tiny_assets, tmp_path):
    model_args, _, args = parse_args(toy_flags(tiny_assets, tmp_path))
    assert model_args.vision_options() == {"pool": 2, "scale": 0.5}
    assert model_args.connector_options() == {"hidden": 8}
    assert args.part_learning_rate("toy_bias") == 5e-2 and args.part_learning_rate("connector") == 1e-2
    with pytest.raises(ConfigError, match="unknown key 'stride' of ToyEncoderOptions; valid keys: pool, scale"):
        parse_args(toy_flags(tiny_assets, tmp_path) + ["--vision_option", "stride=2"])


def test_the_toy_parts_train_and_keep_their_own_init(trained, tiny_assets):
    output, summary = trained
    assert summary["steps"] == 3 and (summary["vision_encoder"], summary["connector_type"]) == ("toy_pooled",
                                                                                                 "toy_gated")
    saved = FilaForConditionalGeneration.from_pretrained(output)
    assert saved.config.vision_options == {"pool": 2, "scale": 0.5} and saved.config.connector_options == {"hidden": 8}
    assert {"toy_bias", "toy_mixer", "connector", "vision", "llm"} <= set(saved.named_parts())
    assert saved.vision_tower.toy_bias.abs().sum() > 0 and saved.connector.toy_mixer.gate.abs().sum() > 0  # trained
    assert checkpointable_parts(saved) == ("llm", "vision")  # the encoder's CLIP layers, found without asking it
    fresh = FilaForConditionalGeneration(saved.config)  # a fresh build: the toy mixer's own init, gate closed
    assert fresh.connector.toy_mixer.gate.item() == 0.0
    # The stage-1 artifact carries the aligned sub-parts, and loads into a fresh model.
    load_connector_artifact(fresh, output)
    for name in ("vision_tower.toy_bias", "connector.toy_mixer.gate", "connector.projector.weight"):
        assert torch.equal(fresh.state_dict()[name], saved.state_dict()[name]), name


def test_the_toy_model_exports_and_loads_with_the_same_logits(trained, tiny_assets, tmp_path):
    output, _ = trained
    out = export_checkpoint(output, tmp_path / "export", ExportOptions(dtype="fp32"))
    exported, trained_model = (FilaForConditionalGeneration.from_pretrained(folder).eval() for folder in (out, output))
    batch = tiny_batch(trained_model, tiny_assets, size=2)
    with torch.no_grad():
        assert torch.equal(exported(**batch).logits, trained_model(**batch).logits)
    card = (out / "README.md").read_text()
    assert "| toy pooling | 2x2, scale 0.5 |" in card and "| toy_mixer |" in card and "| toy_bias |" in card
    assert json.loads((out / "config.json").read_text())["vision_encoder"] == "toy_pooled"
