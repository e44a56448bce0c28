"""The ablation runner end to end at unit size (one seed, a few steps: the pipeline, not the result), its
resumption, its config checks and its verdict."""
from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from fila_train.ablation.config import AblationConfig, StageRecipe, ProbeSettings, load_config
from fila_train.ablation.report import verdict
from fila_train.utils.errors import ConfigError

from distributed_utils import REPO


def unit_config(output, **changes) -> AblationConfig:
    return AblationConfig(**{
        "name": "ablation-unit-group-7c1f", "output": str(output), "variants": ["anyres", "fila_concat"],
        "seeds": [0], "probe": ProbeSettings(train=16, held_out=4),
        "stage1": StageRecipe(max_steps=2, learning_rate=1e-3, global_batch_size=4, per_device_batch_size=4),
        "stage2": StageRecipe(max_steps=2, learning_rate=1e-3, global_batch_size=4, per_device_batch_size=4,
                              cvfm_lr=1e-2, convnext_lr=2e-3),
        "eval_batch_size": 4, **changes})


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    from fila_train.ablation.cli import log_to_wandb
    from fila_train.ablation.report import write_report
    from fila_train.ablation.runner import run_ablation

    config = unit_config(tmp_path_factory.mktemp("ablation"))
    plans = run_ablation(config)
    results = write_report(config, plans)
    log_to_wandb(results, tmp_path_factory.getbasetemp() / "ablation0")
    return config, plans, results


def test_every_variant_trains_both_stages_and_is_scored_on_both_splits(ablation):
    config, plans, results = ablation
    assert [(run["variant"], run["seed"]) for run in results["runs"]] == [("anyres", 0), ("fila_concat", 0)]
    for plan, run in zip(plans, results["runs"]):
        for stage in (1, 2):
            summary = json.loads((plan.stage_dir(stage) / "train_summary.json").read_text())
            assert summary["steps"] == 2 and summary["vision_encoder"] == ("anyres" if plan.variant == "anyres"
                                                                          else "fila_hybrid")
        # Stage 2 started from the run's own stage-1 artifact, through finetune.sh, with the recipe's part rates
        # (FILA's ConvNeXt trained; anyres has none) and ungrouped batches (the probe's answers differ in length).
        log = (plan.folder / "stage2.log").read_text()
        assert str(plan.stage_dir(1) / "connector.safetensors") in log
        assert "modality-length grouping" not in log
        hybrid_rates = "part=convnext lr=0.002" in log and "part=cvfm lr=0.01" in log
        assert hybrid_rates == (plan.variant == "fila_concat")
        assert 0 <= run["fragmented"] <= 1 and 0 <= run["control"] <= 1
        for split in ("fragmented", "control"):
            score = json.loads((plan.eval_dir(split) / "score.json").read_text())
            assert score["count"] == 4 and score["metric"] == "exact"
    hybrid = json.loads((plans[1].stage_dir(2) / "config.json").read_text())
    assert hybrid["vision_options"]["cvfm"]["fusion"] == "concat"


def test_the_tiny_llm_knows_the_probes_words(ablation):
    # Before, a caption was ~30 byte-level tokens that the frozen tiny LLM could not model (stage-1 loss ~6.5, near
    # uniform over its 1024 tokens), and the connector and CVFM stage 1 handed over often left stage 2 at chance.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fila_train.data.probe import QUESTION, TEXTURES, caption
    config, _, _ = ablation
    llm = json.loads((Path(config.output) / "models" / "paths.json").read_text())["llm"]
    tokenizer = AutoTokenizer.from_pretrained(llm)
    for first in TEXTURES:
        for second in TEXTURES:  # one token per word
            text = caption(first, second)
            assert len(tokenizer(text, add_special_tokens=False).input_ids) == len(text.split()), text
    assert len(tokenizer(QUESTION, add_special_tokens=False).input_ids) < 2 * len(QUESTION.split())
    model = AutoModelForCausalLM.from_pretrained(llm)
    ids = tokenizer([caption("checker", "vertical stripes")], return_tensors="pt").input_ids
    assert model(input_ids=ids, labels=ids).loss.item() < 3.0  # 0.7 now; the demo-text LLM: 8.2 (uniform: 6.9)


def test_the_table_chart_and_wandb_group(ablation):
    config, plans, results = ablation
    folder = plans[0].folder.parents[2]
    table = (folder / "results.md").read_text()
    assert re.search(r"\| anyres \| [\d.]+ ± [\d.]+ \([\d.]+-[\d.]+\) \| [\d.]+ ± ", table) and "| fila_concat |" in table
    assert "FILA (concat) - anyres, fragmented:" in table
    assert json.loads((folder / "results.json").read_text())["summary"].keys() == {"anyres", "fila_concat"}
    assert (folder / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every training run and the results run went to wandb (offline) in the ablation's group.
    records = [path.read_bytes() for path in folder.rglob("run-*.wandb")]
    assert len(records) == 2 * 2 + 1 and all(config.name.encode() in record for record in records)


def test_a_second_run_keeps_every_finished_step(ablation, caplog):
    from fila_train.ablation.runner import run_ablation

    config, plans, _ = ablation
    before = {path: path.stat().st_mtime_ns for plan in plans for path in plan.folder.rglob("*.json")}
    with caplog.at_level("INFO"):
        run_ablation(config)
    assert caplog.text.count("done before, kept") == 2 * 3  # stage 1, stage 2, eval (both splits) per run
    assert before == {path: path.stat().st_mtime_ns for plan in plans for path in plan.folder.rglob("*.json")}


def test_finished_runs_or_a_probe_of_another_recipe_are_refused(ablation):
    """Before, a finished step was kept whatever the config now asked: stage 2 at other steps, another probe size
    or seed, and the table compared the old runs with new ones (and reported the new recipe for all of them)."""
    import dataclasses

    from fila_train.ablation.report import write_report
    from fila_train.ablation.runner import run_ablation

    config, plans, _ = ablation
    before = {path: path.stat().st_mtime_ns for plan in plans for path in plan.folder.rglob("*.json")}
    longer = dataclasses.replace(config, stage2=dataclasses.replace(config.stage2, max_steps=3))
    with pytest.raises(ConfigError, match=re.escape("anyres-seed0 stage2 (stage2.max_steps 2 -> 3)")):
        run_ablation(longer)
    with pytest.raises(ConfigError, match="another recipe"):
        write_report(longer, plans)  # `fila-train ablate report` with the changed config
    with pytest.raises(ConfigError, match=r"probe in .* other settings \(options.seed 0 -> 1\)"):
        run_ablation(dataclasses.replace(config, probe=dataclasses.replace(config.probe, seed=1)))
    assert before == {path: path.stat().st_mtime_ns for plan in plans for path in plan.folder.rglob("*.json")}


def test_a_failed_step_names_its_log(ablation, tmp_path):
    from pathlib import Path

    from fila_train.ablation.runner import AblationRunError, prepare_models, run_ablation

    models = prepare_models(ablation[0], Path(ablation[0].output))  # the fixture's tiny models, not made again
    config = unit_config(tmp_path, variants=["anyres"], report_to="none", models=models,
                         launch={"NPROC_PER_NODE": "1", "ZERO_CONFIG": "zero_configs/no_such.json"})
    with pytest.raises(AblationRunError, match=re.escape(f"anyres-seed0 stage 1 failed (exit 1); see {tmp_path}")):
        run_ablation(config)


def test_configs_are_checked_and_the_cluster_config_loads(tmp_path):
    real = load_config(REPO / "configs/ablation/fila7b.yaml")
    assert real.models["VISION_TOWER"] == "openai/clip-vit-large-patch14-336" and real.parallel == 1
    assert real.variants == ["anyres", "fila_concat", "fila_add", "fila_cross_attn"]
    assert real.stage2.learning_rate == 2e-5 and real.stage1.cvfm_lr is None
    # The tiny recipe's stand-ins (a trained random ConvNeXt, CVFM at 1e-2, no clipping) stay out of FILA-7B's.
    assert (real.stage2.convnext_lr, real.stage2.cvfm_lr, real.stage2.connector_lr) == (None, None, None)
    assert real.stage2.max_grad_norm == 1.0 and real.stage2.lr_scheduler == "cosine"
    # The probe's images take the canvas with the most tiles: under 2048 every record was dropped.
    from transformers import CLIPVisionConfig

    from fila_train.bench.configs import CLIP_VIT_L_336
    from fila_train.model.vision.registry import build_image_processor
    counts = build_image_processor("anyres", CLIPVisionConfig(**CLIP_VIT_L_336)).image_token_counts()
    assert max(counts.values()) < min(real.stage1.max_length, real.stage2.max_length), counts
    with pytest.raises(ConfigError, match="unknown ablation variant 'fila_sum'"):
        load_config(None, {"variants": ["anyres", "fila_sum"]})
    load_config(None, {"variants": ["anyres", "fila_concat+mmfuser"]})
    for stage1_rate in ("connector_lr", "convnext_lr"):  # stage 1: the connector's rate is learning_rate; no ConvNeXt
        with pytest.raises(ConfigError, match=f"stage1.{stage1_rate}"):
            load_config(None, {"stage1": {stage1_rate: 1e-3}})
    (tmp_path / "bad.yaml").write_text("stage2:\n  steps: 10\n")
    with pytest.raises(ConfigError, match="unknown key 'steps'; valid keys: max_steps, learning_rate"):
        load_config(tmp_path / "bad.yaml")


def test_the_verdict_compares_the_margin_with_the_seed_spread():
    def split(values):
        return {"mean": sum(values) / len(values), "range": max(values) - min(values), "seeds": len(values)}

    summary = {"anyres": {"fragmented": split([0.50, 0.55, 0.52]), "control": split([0.80, 0.85, 0.82])},
               "fila_concat": {"fragmented": split([0.70, 0.75, 0.72]), "control": split([0.80, 0.78, 0.84])}}
    found = verdict(summary)
    assert found["fila_beats_anyres_on_fragmented"] and found["fila_not_worse_on_control"] and found["seeds"] == 3
    summary["fila_concat"]["fragmented"] = split([0.50, 0.75, 0.60])  # a margin inside the spread
    assert not verdict(summary)["fila_beats_anyres_on_fragmented"]
    summary["fila_concat"]["control"] = split([0.60, 0.62, 0.61])
    assert not verdict(summary)["fila_not_worse_on_control"]
    assert verdict({"anyres": summary["anyres"]}) is None


def test_a_second_ablation_on_this_machine_gets_other_master_ports():
    # Two ablations at once used to launch torchrun on the same port: the second failed with EADDRINUSE.
    from fila_train.ablation.runner import free_port
    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        taken = held.getsockname()[1]
        port = free_port(taken)
    assert taken < port < taken + 10


def test_an_ablation_config_key_given_twice_is_refused(tmp_path):
    """YAML keeps the last of two equal keys: a config with two 'stage2:' blocks ran the second alone, silently."""
    config = tmp_path / "twice.yaml"
    config.write_text("stage2:\n  max_steps: 2\nvariants: [anyres]\nstage2:\n  max_steps: 3\n")
    with pytest.raises(ConfigError, match=rf"ablation config {config}: line 4: field 'stage2' appears twice"):
        load_config(config)


def test_a_report_of_runs_not_finished_is_one_line_naming_the_run(tmp_path, capsys):
    """docs/ablation.md: `fila-train ablate report` rewrites the table from finished runs. Before, a folder whose
    runs had not finished (or a report without the run's own --variants / --seeds) ended in a FileNotFoundError
    traceback from the first stage summary it read."""
    from fila_train.cli import main

    assert main(["ablate", "report", "--output", str(tmp_path), "--report_to", "none"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert "anyres-seed0 has not finished" in error and "stage1" in error and "fila-train ablate run" in error, error
    finished = tmp_path / "runs" / "anyres" / "seed0" / "stage1" / "train_summary.json"
    finished.parent.mkdir(parents=True)
    finished.write_text(json.dumps({"loss_first": 1.0, "loss_last": 0.5, "seconds": 1.0}))
    assert main(["ablate", "report", "--output", str(tmp_path), "--report_to", "none"]) == 1
    error = capsys.readouterr().err
    assert "anyres-seed0 has not finished" in error and "stage2" in error and "Traceback" not in error, error
