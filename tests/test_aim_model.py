"""aim_opt: what trains, what the LLM sees for each demo mode, fused token lengths, model types."""
import pytest
import torch
from omegaconf import OmegaConf

import lavis_mmict
from _aim_model import build
from _batches import aim_batch as make_batch
from lavis.common.registry import registry
from lavis_mmict.models.aim_opt import AIMOpt


def test_registered_with_lavis_names_and_types():
    assert registry.get_model_class("aim_opt") is AIMOpt
    assert set(AIMOpt.PRETRAINED_MODEL_CONFIG_DICT) == {
        "tiny", "pretrain_opt2.7b", "pretrain_opt6.7b", "caption_coco_opt2.7b", "caption_coco_opt6.7b"}
    for model_type, path in AIMOpt.PRETRAINED_MODEL_CONFIG_DICT.items():
        cfg = OmegaConf.load(path).model
        assert cfg.arch == "aim_opt" and cfg.model_type == model_type
        assert cfg.freeze_vit and cfg.freeze_qformer and cfg.freeze_llm  # AIM: every part frozen
        if model_type != "tiny":
            size = model_type.split("opt")[-1]
            assert cfg.llm_model == f"facebook/opt-{size}"
            assert cfg.pretrained.endswith(f"blip2_pretrained_opt{size}.pth")
            assert bool(cfg.load_finetuned) == model_type.startswith("caption")
    model = lavis_mmict.load_model("aim_opt")
    # LAVIS Blip2OPT's parameter names: its checkpoints load without renaming
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert {"visual_encoder", "ln_vision", "Qformer", "query_tokens", "opt_proj", "opt_model"} <= names


def test_only_projection_and_separator_train_and_frozen_parts_stay_bit_identical():
    model = build()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projection.weight", "projection.bias", "separator_embed"}
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if k not in trainable}
    projection_before = model.projection.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.05)
    model.train()
    for step in range(3):
        loss = model(make_batch(seed=step))["loss"]
        loss.backward()
        for name, param in model.named_parameters():
            if name not in trainable:
                assert param.grad is None, name
        assert model.projection.weight.grad.abs().sum() > 0 and model.separator_embed.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
    for key, value in model.state_dict().items():
        if key not in trainable:
            assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(model.projection.weight, projection_before)
    assert not model.opt_model.training and not model.Qformer.training  # frozen parts: no dropout


def test_mlp_projection_and_config_errors():
    model = build(projection="mlp")
    assert isinstance(model.projection, torch.nn.Sequential)
    with pytest.raises(ValueError, match="demo_format"):
        build(demo_format="vanilla")
    with pytest.raises(ValueError, match="fusion_layer"):
        build(fusion_layer=7)
    with pytest.raises(ValueError, match="projection"):
        build(projection="conv")
    with pytest.raises(ValueError, match="demo_bank"):
        build(demo_bank={"enabled": True, "size": 3})


def text_lengths(model, texts):
    return [len(model.opt_tokenizer(t, add_special_tokens=False).input_ids[: model.max_txt_len]) for t in texts]


def test_fused_tokens_have_the_demo_text_length_and_raw_demos_carry_visual_tokens():
    batch = make_batch()
    fused = build(demo_bank={"enabled": False})
    with torch.no_grad():
        encoded = fused.encode(batch)
    token_mask, separator = encoded.demo_token_mask, encoded.separator
    assert torch.equal(separator, fused.separator_embed)
    for b, texts in enumerate(batch["demo_text"]):
        expected = [n if real else 0 for n, real in zip(text_lengths(fused, texts), batch["demo_mask"][b])]
        assert token_mask[b].sum(dim=1).tolist() == expected

    raw = build(demo_format="raw")
    num_visual = raw.query_tokens.shape[1]
    with torch.no_grad():
        encoded = raw.encode(batch)
    raw_embeds, raw_mask = encoded.demo_embeds, encoded.demo_token_mask
    lengths = raw_mask.sum(dim=2)
    for b, texts in enumerate(batch["demo_text"]):
        for k, n in enumerate(text_lengths(raw, texts)):
            assert lengths[b, k] == (num_visual + 1 + n if batch["demo_mask"][b, k] else 0)
    # a raw demo starts with its visual tokens: the same as the query's own visual tokens for that image
    with torch.no_grad():
        visual = raw.encode_visual(batch["demo_image"][0, :1])
    assert torch.allclose(raw_embeds[0, 0, :num_visual], visual[0], atol=1e-5)


def test_fusion_layer_picks_that_layers_hidden_states_at_text_positions():
    model = build(fusion_layer=1, demo_bank={"enabled": False})
    texts = ["a red square", "Question: what? Short answer: tiger"]
    frames = make_batch()["demo_image"][0, :2]
    with torch.no_grad():
        visual = model.encode_visual(frames)
        states = model.read_demos(visual, texts)
        # one demo alone, by hand: [visual][</s> text] through the decoder, layer 1, text positions
        ids = model.opt_tokenizer(texts[1], return_tensors="pt").input_ids
        embeds = torch.cat([visual[1:2], model.embed_tokens(ids)], dim=1)
        hidden = model.opt_model.model.decoder(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1]
    assert [s.shape[0] for s in states] == text_lengths(model, texts)
    assert torch.allclose(states[1], hidden[0, visual.shape[1] + 1:], atol=1e-5)


def test_demo_modes_decide_what_the_llm_sees():
    batch = make_batch()
    other = dict(batch, demo_text=[["completely different words", "more", ""], ["other text", "", ""]])
    for mode, depends_on_demos in (("fused", True), ("raw", True), ("none", False)):
        model = build(demo_format=mode).eval()
        with torch.no_grad():
            same = model(batch)["loss"].item() == model(other)["loss"].item()
        assert same != depends_on_demos, mode
    zero_shot = build(demo_format="none").eval()
    no_demos = dict(batch, demo_mask=torch.zeros(2, 3, dtype=torch.bool))
    with torch.no_grad():
        assert zero_shot(batch)["loss"].item() == zero_shot(no_demos)["loss"].item()


def test_generation_on_video_clips_and_images():
    model = build().eval()
    video = make_batch(frames=4)
    answers = model.predict_answers(video, num_beams=2, max_len=4)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    images = make_batch()
    images["image"] = images["image"][:, 0]
    images["demo_image"] = images["demo_image"][:, :, 0]  # (B, K, 3, H, W) still images
    assert len(model.generate(images, num_beams=1, max_length=3, num_captions=1)) == 2


def test_pretrained_gives_the_base_not_aims_parameters(tmp_path):
    base = build(seed=3, demo_format="raw")
    path = tmp_path / "base.pth"
    torch.save({"model": base.state_dict()}, path)
    model = build(seed=4, pretrained=str(path))
    for name, value in base.state_dict().items():
        if name.startswith("projection"):
            assert not torch.equal(model.state_dict()[name], value)  # AIM's own weights are not the base's
        elif name != "separator_embed":
            assert torch.equal(model.state_dict()[name], value), name
    # the separator starts from the loaded LLM's embedding of its token
    assert torch.equal(model.separator_embed, base.opt_model.get_input_embeddings().weight[model.separator_id])
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build(pretrained=str(tmp_path / "missing.pth"))
