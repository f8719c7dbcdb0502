"""LAVIS BLIP-2 checkpoints load into mmict_blip2 with every key mapped; real model types resolve
their configs and fail at once, naming what is missing, when their weights are not on disk."""
import re
import time

import pytest
import torch
from lavis.models.blip2_models.blip2_opt import Blip2OPT
from lavis.models.blip2_models.blip2_t5 import Blip2T5
from omegaconf import OmegaConf

import lavis_mmict
from lavis_mmict import backbones
from lavis_mmict.checkpoints import CheckpointError
from lavis_mmict.models.mmict_blip2 import SEPARATOR_TOKEN, MMICTBlip2

from _lavis_blip2 import build_lavis_blip2, stage1_standin, tiny_cfg

REAL_TYPES = ["pretrain_opt2.7b", "pretrain_opt6.7b", "pretrain_flant5xl", "pretrain_flant5xxl"]
FINETUNED_TYPES = [t.replace("pretrain_", "own_finetuned_") for t in REAL_TYPES]

# What MMICT adds to a BLIP-2 model: the Q-Former's text embeddings and text FFN (BLIP-2 deletes
# them; M-Hub reads text) and, optionally, a trainable separator.
MMICT_ONLY = re.compile(
    r"mhub\.Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight"
    r"|mhub\.Qformer\.bert\.encoder\.layer\.\d+\.(intermediate\.dense|output\.dense|output\.LayerNorm)\.(weight|bias)"
    r"|separator_embed"
)


@pytest.mark.parametrize("lavis_cls,model_type,prefix", [(Blip2OPT, "tiny", "opt_"), (Blip2T5, "tiny_t5", "t5_")])
@pytest.mark.parametrize("train_separator", [False, True])
def test_lavis_blip2_checkpoint_maps_every_key(lavis_cls, model_type, prefix, train_separator, tmp_path, monkeypatch):
    lavis_model = build_lavis_blip2(lavis_cls, model_type, tmp_path, monkeypatch)
    lavis_state = lavis_model.state_dict()
    path = tmp_path / "blip2.pth"
    torch.save({"model": lavis_state}, path)

    torch.manual_seed(0)
    ours = MMICTBlip2.from_config(tiny_cfg(model_type, train_separator=train_separator))
    # stage 2 lacks the Q-Former's text branch: without its stage-1 source, loading is refused
    with pytest.raises(CheckpointError, match=r"blip2\.pth.*mhub\.Qformer\.bert\.embeddings.*qformer_text_init"):
        ours.load_lavis_checkpoint(str(path))
    ours.load_qformer_text_init(stage1_standin(tmp_path, model_type)[0])
    result = ours.load_lavis_checkpoint(str(path))

    assert result.unexpected_keys == []
    # missing: exactly what MMICT adds (text embeddings, every layer's text FFN, the separator)
    assert set(result.missing_keys) == {key for key in ours.state_dict() if MMICT_ONLY.fullmatch(key)}
    assert len(result.missing_keys) == 2 + 6 * len(ours.mhub.Qformer.bert.encoder.layer) + train_separator
    assert ("separator_embed" in result.missing_keys) == train_separator

    own = ours.state_dict()
    for key, value in lavis_state.items():
        mapped = key.replace("Qformer.", "mhub.Qformer.", 1) if key.startswith("Qformer.") else key
        mapped = {"query_tokens": "mhub.query_tokens"}.get(mapped, mapped)
        mapped = mapped.replace(prefix + "proj.", "llm_proj.", 1).replace(prefix + "model.", "llm_model.", 1)
        rows = min(value.shape[0], own[mapped].shape[0]) if value.dim() else None
        assert torch.equal(own[mapped][:rows].float(), value[:rows].float()), key

    # the separator takes a spare row of the checkpoint's table (OPT: 50272 rows for 50265 tokens,
    # FlanT5: 32128 for 32100, the tiny ones likewise); nothing resized, its row stays ours
    embeddings = ours.llm_model.get_input_embeddings().weight
    table = lavis_state[f"{prefix}model.{'model.decoder.embed_tokens' if prefix == 'opt_' else 'shared'}.weight"]
    assert embeddings.shape == table.shape and ours.separator_id < embeddings.shape[0]

    # the loaded model runs, and LAVIS's load_model(checkpoint=...) path maps the same way
    ours.eval()
    batch = {"image": torch.randn(1, 2, 3, 32, 32), "text_input": ["what?"], "text_output": ["red"],
             "demo_image": torch.randn(1, 1, 2, 3, 32, 32), "demo_text": [["Question: a? Short answer: b"]],
             "demo_mask": torch.tensor([[True]])}
    assert torch.isfinite(ours(batch)["loss"])
    again = MMICTBlip2.from_config(tiny_cfg(model_type, qformer_text_init=stage1_standin(tmp_path, model_type)[0]))
    assert again.load_checkpoint(str(path)).unexpected_keys == []


def test_our_full_state_dict_round_trips(tmp_path):
    model = MMICTBlip2.from_config(tiny_cfg("tiny_t5"))
    path = tmp_path / "full.pth"
    torch.save({"model": model.state_dict()}, path)
    other = MMICTBlip2.from_config(tiny_cfg("tiny_t5"))
    result = other.load_lavis_checkpoint(str(path))
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert torch.equal(other.llm_proj.weight, model.llm_proj.weight)


@pytest.mark.parametrize("model_type", REAL_TYPES)
def test_real_types_resolve_to_blip2_configs(model_type):
    cfg = OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model
    llm = {"opt2.7b": "facebook/opt-2.7b", "opt6.7b": "facebook/opt-6.7b",
           "flant5xl": "google/flan-t5-xl", "flant5xxl": "google/flan-t5-xxl"}[model_type.split("_")[1]]
    assert cfg.model_type == model_type and cfg.arch == "mmict_blip2"
    assert cfg.llm_model == llm and cfg.llm_init == "pretrained" and cfg.freeze_llm
    assert cfg.vit_model == "eva_clip_g" and cfg.freeze_vit and cfg.image_size == 224
    assert cfg.qformer_model == "bert-base-uncased" and cfg.qformer_init == "pretrained"
    assert cfg.num_query_token == 32 and cfg.cross_attention_freq == 2
    assert cfg.pretrained.endswith(f"/BLIP2/blip2_pretrained_{model_type.split('_')[1]}.pth")
    assert cfg.demo_format == "mmict" and cfg.frame_mode == "concat"
    if "t5" in model_type:
        assert cfg.llm_dtype == "bfloat16" and cfg.llm_config_overrides.dense_act_fn == "gelu"
    else:
        assert cfg.llm_dtype == "float16"


@pytest.mark.parametrize("model_type", REAL_TYPES)
def test_real_types_without_weights_fail_at_once_naming_each_missing_piece(model_type, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model
    cfg.hf_cache_dir = str(tmp_path / "hf")
    start = time.monotonic()
    with pytest.raises(backbones.MissingWeightsError) as error:
        MMICTBlip2.from_config(cfg)
    assert time.monotonic() - start < 5, "no hub retries, no ViT-g built before failing"
    message = str(error.value)
    for needed in ("eva_vit_g.pth", "model.vit_weights", str(tmp_path / "torch"),  # ViT
                   "bert-base-uncased", "model.qformer_model",  # Q-Former init
                   cfg.llm_model, "model.llm_model", str(tmp_path / "hf"), "model.hf_cache_dir",  # LLM
                   cfg.pretrained.rsplit("/", 1)[1], "model.pretrained"):  # BLIP-2 checkpoint
        assert needed in message, (needed, message)


def test_unreachable_hub_is_treated_like_offline(tmp_path, monkeypatch):
    """Without the offline switches but no network, the probe fails fast and so does the build."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    probed = []

    def refuse(address, timeout):
        probed.append(address)
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbones.socket, "create_connection", refuse)
    backbones.host_reachable.cache_clear()
    try:
        problems = backbones.missing_weights(OmegaConf.create(
            {"vit_model": "eva_clip_g", "llm_model": "facebook/opt-2.7b", "hf_cache_dir": str(tmp_path)}))
    finally:
        backbones.host_reachable.cache_clear()
    assert {host for host, _ in probed} == {"storage.googleapis.com", "huggingface.co"}
    assert len(probed) == 2, "one probe per host"
    assert any("huggingface.co cannot be reached" in p and "facebook/opt-2.7b" in p for p in problems)
    assert any("storage.googleapis.com cannot be reached" in p for p in problems)
    # local folders never probe the network
    probed.clear()
    assert backbones.hf_load_kwargs(OmegaConf.create({}), backbones.resolve_asset_path("assets/tiny_t5")) == {
        "cache_dir": None, "local_files_only": True}
    assert probed == []


@pytest.mark.parametrize("model_type", FINETUNED_TYPES)
def test_finetuned_types_require_a_checkpoint_path(model_type):
    cfg = OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model
    base = OmegaConf.load(MMICTBlip2.default_config_path(model_type.replace("own_finetuned_", "pretrain_"))).model
    assert cfg.load_finetuned and not cfg.finetuned
    assert {k: v for k, v in cfg.items() if k not in ("model_type", "load_finetuned", "finetuned")} == \
        {k: v for k, v in base.items() if k not in ("model_type", "load_finetuned", "finetuned")}
    with pytest.raises(ValueError, match="model.finetuned.*checkpoint=") as error:
        MMICTBlip2.from_config(cfg)
    assert model_type in str(error.value) and "your own fine-tuned checkpoint" in str(error.value)
    old_name = model_type.replace("own_", "")  # the old names say what they became
    with pytest.raises(ValueError, match=f"{old_name}.*renamed to.*{model_type}"):
        MMICTBlip2.default_config_path(old_name)


def test_finetuned_type_loads_our_runner_checkpoint(tmp_path):
    """A finetuned type = its base type + a train.py checkpoint (trainable parameters only)."""
    from lavis_mmict.checkpoints import atomic_torch_save, trainable_state_dict

    torch.manual_seed(3)
    trained = MMICTBlip2.from_config(tiny_cfg("tiny_t5", train_separator=True))
    with torch.no_grad():
        trained.separator_embed.add_(1.0)
        trained.llm_proj.bias.add_(1.0)
    path = tmp_path / "checkpoint_best.pth"
    atomic_torch_save({"model": trainable_state_dict(trained), "epoch": 0}, path)
    cfg = tiny_cfg("tiny_t5", train_separator=True, load_finetuned=True, finetuned=str(path))
    loaded = MMICTBlip2.from_config(cfg)
    assert torch.equal(loaded.separator_embed, trained.separator_embed)
    assert torch.equal(loaded.llm_proj.bias, trained.llm_proj.bias)
    missing = tiny_cfg("tiny_t5", load_finetuned=True, finetuned=str(tmp_path / "nope.pth"))
    with pytest.raises(backbones.MissingWeightsError, match="model.finetuned"):
        MMICTBlip2.from_config(missing)


def test_separator_is_one_special_token_in_both_llm_tokenizers():
    for model_type in ("tiny", "tiny_t5"):
        _, tokenizer, _ = backbones.build_llm(tiny_cfg(model_type), extra_tokens=[SEPARATOR_TOKEN])
        ids = tokenizer(SEPARATOR_TOKEN, add_special_tokens=False).input_ids
        assert ids == [tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)]
        assert SEPARATOR_TOKEN in tokenizer.all_special_tokens
