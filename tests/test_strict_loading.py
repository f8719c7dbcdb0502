"""Strict checkpoint loading: after loading, every parameter comes from the checkpoint or from a
named source (the Q-Former text branch of ``model.qformer_text_init``, the frozen ViT's and LLM's
own weights, the separator row); anything else, and a file that is not a checkpoint, is a
CheckpointError naming the file and the keys. The text branch comes from LAVIS's stage-1 file."""
import pytest
import torch
from lavis.models.blip2_models.blip2_opt import Blip2OPT

from lavis_mmict import backbones
from lavis_mmict.checkpoints import CheckpointError, read_checkpoint
from lavis_mmict.models.mmict_blip2 import MMICTBlip2

from _aim_model import build as build_aim
from _lavis_blip2 import build_lavis_blip2, stage1_standin, tiny_cfg

TEXT_BRANCH_KEYS = ("bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                    "bert.encoder.layer.0.intermediate.dense.weight", "bert.encoder.layer.1.output.dense.bias",
                    "bert.encoder.layer.1.output.LayerNorm.weight")


@pytest.fixture
def lavis_opt_file(tmp_path, monkeypatch):
    """A LAVIS Blip2OPT stage-2 state dict (no Q-Former text branch) saved as a .pth; (path, state)."""
    state = build_lavis_blip2(Blip2OPT, "tiny", tmp_path, monkeypatch).state_dict()
    path = tmp_path / "blip2_pretrained_opt.pth"
    torch.save({"model": state}, path)
    return str(path), state


def test_text_branch_comes_from_qformer_text_init_and_the_rest_from_stage2(lavis_opt_file, tmp_path):
    stage2_path, stage2 = lavis_opt_file
    stage1_path, stage1 = stage1_standin(tmp_path)
    model = MMICTBlip2.from_config(tiny_cfg("tiny", qformer_text_init=stage1_path, pretrained=stage2_path))
    qformer = model.mhub.Qformer.state_dict()
    for key in TEXT_BRANCH_KEYS:
        expected = stage1["Qformer." + key]
        assert torch.equal(qformer[key], expected[:qformer[key].shape[0]]), key  # [DEC] row dropped
    # stage 2 is loaded after stage 1: the query side is stage 2's, not stage 1's
    for key in ("bert.encoder.layer.0.crossattention.self.query.weight", "bert.encoder.layer.0.output_query.dense.weight"):
        assert torch.equal(qformer[key], stage2["Qformer." + key]), key
        assert not torch.equal(qformer[key], stage1["Qformer." + key]), key
    assert torch.equal(model.mhub.query_tokens, stage2["query_tokens"])


def test_stage2_without_text_init_names_the_file_keys_and_where_the_text_branch_comes_from(lavis_opt_file):
    path, _ = lavis_opt_file
    with pytest.raises(CheckpointError) as error:
        MMICTBlip2.from_config(tiny_cfg("tiny", pretrained=path))
    message = str(error.value)
    assert path in message and "mhub.Qformer.bert.embeddings.word_embeddings.weight" in message
    assert "model.qformer_text_init" in message and "blip2_pretrained.pth" in message


@pytest.mark.parametrize("dropped", ["query_tokens", "opt_proj.weight", "Qformer.bert.encoder.layer.0.crossattention.self.key.bias"])
def test_a_file_lacking_trained_parts_is_refused_by_both_models(lavis_opt_file, tmp_path, dropped):
    _, state = lavis_opt_file
    path = tmp_path / "partial.pth"
    torch.save({"model": {k: v for k, v in state.items() if k != dropped}}, path)
    ours_name = {"query_tokens": "mhub.query_tokens", "opt_proj.weight": "llm_proj.weight"}.get(
        dropped, dropped.replace("Qformer.", "mhub.Qformer.", 1))
    stage1_path, _ = stage1_standin(tmp_path)
    with pytest.raises(CheckpointError, match=f"{path}.*{ours_name}"):
        MMICTBlip2.from_config(tiny_cfg("tiny", qformer_text_init=stage1_path, pretrained=str(path)))
    with pytest.raises(CheckpointError, match=f"{path}.*{dropped}"):
        build_aim(pretrained=str(path))


def test_unknown_keys_and_other_shapes_are_refused(lavis_opt_file, tmp_path):
    _, state = lavis_opt_file
    extra = tmp_path / "extra.pth"
    torch.save({"model": dict(state, **{"Qformer.bert.pooler.dense.weight": torch.zeros(2, 2)})}, extra)
    with pytest.raises(CheckpointError, match="unexpected keys.*Qformer.bert.pooler.dense.weight"):
        build_aim(pretrained=str(extra))
    wide = tmp_path / "wide.pth"
    torch.save({"model": dict(state, **{"opt_proj.weight": torch.zeros(3, 3)})}, wide)
    with pytest.raises(CheckpointError, match=f"{wide}.*shape mismatch.*opt_proj.weight"):
        build_aim(pretrained=str(wide))


def test_aim_loads_a_lavis_blip2_opt_file_strictly(lavis_opt_file):
    path, state = lavis_opt_file
    model = build_aim(pretrained=path)
    assert torch.equal(model.opt_proj.weight, state["opt_proj.weight"])
    assert torch.equal(model.Qformer.bert.encoder.layer[0].crossattention.self.key.bias,
                       state["Qformer.bert.encoder.layer.0.crossattention.self.key.bias"])


def test_a_runner_checkpoint_without_buffers_loads_as_a_base(tmp_path):
    """`make demo`'s AIM base is trained by train.py, whose checkpoints hold trainable parameters
    only: the buffers the model builds (position_ids) are not in them and are not missing."""
    from lavis_mmict.checkpoints import trainable_state_dict

    base = build_aim()
    for parameter in base.parameters():
        parameter.requires_grad_(True)
    state = trainable_state_dict(base)
    assert "Qformer.bert.embeddings.position_ids" in base.state_dict() and not any("position_ids" in k for k in state)
    path = tmp_path / "checkpoint_400.pth"
    torch.save({"model": state}, path)
    loaded = build_aim(pretrained=str(path))
    assert torch.equal(loaded.opt_proj.weight, base.opt_proj.weight)
    del state["opt_proj.weight"]  # a parameter missing is still refused
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError, match="opt_proj.weight"):
        build_aim(pretrained=str(path))


def test_a_base_trained_with_one_projection_loads_under_another(tmp_path):
    """The base's own projection (linear, trained with the base) is AIM's, not the base's: an mlp
    AIM neither reads nor expects it."""
    from lavis_mmict.checkpoints import trainable_state_dict

    base = build_aim(projection="linear")
    for parameter in base.parameters():
        parameter.requires_grad_(True)
    path = tmp_path / "base.pth"
    torch.save({"model": trainable_state_dict(base)}, path)
    loaded = build_aim(projection="mlp", pretrained=str(path))
    assert torch.equal(loaded.opt_proj.weight, base.opt_proj.weight)
    assert not any(name == "projection.weight" for name, _ in loaded.named_parameters())


def test_a_text_file_as_checkpoint_is_a_checkpoint_error_naming_it(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are my notes, not a checkpoint\n")
    with pytest.raises(CheckpointError, match=str(path)):
        MMICTBlip2.from_config(tiny_cfg("tiny", pretrained=str(path)))
    with pytest.raises(CheckpointError, match=str(path)):
        build_aim(pretrained=str(path))
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(str(path))
    with pytest.raises(CheckpointError, match=str(path)):
        MMICTBlip2.from_config(tiny_cfg("tiny", qformer_text_init=str(path)))


def test_qformer_text_init_must_hold_the_text_branch_and_be_on_disk(tmp_path, monkeypatch):
    wrong = tmp_path / "stage2_only.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1, 8, 64)}}, wrong)
    with pytest.raises(CheckpointError, match=f"{wrong}.*model.qformer_text_init.*word_embeddings"):
        MMICTBlip2.from_config(tiny_cfg("tiny", qformer_text_init=str(wrong)))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = "https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/blip2_pretrained.pth"
    with pytest.raises(backbones.MissingWeightsError) as error:
        MMICTBlip2.from_config(tiny_cfg("tiny", qformer_text_init=url))
    message = str(error.value)
    assert "model.qformer_text_init" in message and str(tmp_path) in message and "blip2_pretrained.pth" in message


def test_real_types_take_the_text_branch_from_lavis_stage1():
    from omegaconf import OmegaConf

    for model_type, path in MMICTBlip2.PRETRAINED_MODEL_CONFIG_DICT.items():
        cfg = OmegaConf.load(path).model
        if cfg.get("llm_init", "pretrained") == "pretrained":
            assert cfg.qformer_text_init.endswith("/blip2_pretrained.pth"), model_type
