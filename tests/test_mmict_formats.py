"""Every demo format x frame mode x LLM family: exactly which features reach the LLM, where.

The expected LLM input of each sample is rebuilt here the slow, obvious way (one clip at a time
through the ViT and M-Hub, pieces concatenated by hand) and compared position by position with
what the batched model feeds its LLM.
"""
import pytest
import torch
from omegaconf import OmegaConf

import lavis_mmict
from _batches import B, F, K, SIZE, mmict_batch as make_batch
from _llm_spy import llm_inputs
from lavis_mmict.models.mmict_blip2 import DEMO_FORMATS, QUERY_TEXT_IN_QFORMER_DEFAULT, MMICTBlip2
from lavis_mmict.models.sequence import IGNORE_INDEX


@pytest.fixture(scope="module", params=["tiny", "tiny_t5"])
def model(request):
    torch.manual_seed(0)
    return lavis_mmict.load_model("mmict_blip2", request.param, is_eval=True)


@pytest.fixture
def configured(model):
    """Set demo_format / frame_mode on the shared model for one test, then restore them."""
    saved = model.demo_format, model.frame_mode, model.query_text_in_qformer

    def configure(demo_format, frame_mode="concat"):
        model.demo_format, model.frame_mode = demo_format, frame_mode
        model.query_text_in_qformer = QUERY_TEXT_IN_QFORMER_DEFAULT[demo_format]
        return model

    yield configure
    model.demo_format, model.frame_mode, model.query_text_in_qformer = saved


def hub_pass(model, frames, text):
    """One clip (F, 3, H, W) through ViT + M-Hub, alone. text None = vision-only Q-Former pass.
    Returns (query outputs (Nq, H), text outputs (L, H) or None), per frame_mode."""
    features = model.encode_frames(frames.unsqueeze(0))[0]  # F, P, Dv
    memories = [features.flatten(0, 1)] if model.frame_mode == "concat" else list(features)
    queries, texts = [], []
    for memory in memories:
        memory = memory.unsqueeze(0)
        ones = torch.ones(memory.shape[:2], dtype=torch.long)
        if text is None:
            out = model.mhub(memory, ones)
        else:
            tokens = model.qformer_tokenizer([text], return_tensors="pt")
            out = model.mhub(memory, ones, tokens.input_ids, tokens.attention_mask)
            texts.append(out.text_features[0])
        queries.append(out.query_features[0])
    return torch.cat(queries), (torch.stack(texts).mean(0) if texts else None)


def llm_embed(model, text, **kwargs):
    ids = model.llm_tokenizer(text, return_tensors="pt", **kwargs).input_ids[0]
    return model.embed_tokens(ids), ids


def expected_input(model, batch, i):
    """Sample i's LLM input (encoder input for T5), built piece by piece. Returns (embeds, kinds)."""
    pieces, kinds = [], []

    def add(embeds, kind):
        pieces.append(embeds)
        kinds.extend([kind] * embeds.shape[0])

    separator = model.separator_embedding().unsqueeze(0)
    for k in range(K):
        if model.demo_format == "none" or not batch["demo_mask"][i, k]:
            continue
        text, frames = batch["demo_text"][i][k], batch["demo_image"][i, k]
        if model.demo_format == "mmict":
            add(model.llm_proj(hub_pass(model, frames, text)[1]), "demo_mhub_text")
        elif model.demo_format == "vanilla_ict":
            add(model.llm_proj(hub_pass(model, frames, None)[0]), "demo_visual")
            add(llm_embed(model, text, add_special_tokens=False)[0], "demo_text")
        else:
            add(llm_embed(model, text, add_special_tokens=False)[0], "demo_text")
        add(separator, "separator")
    question = batch["text_input"][i] if model.query_text_in_qformer else None
    query_visual, _ = hub_pass(model, batch["image"][i], question)
    add(model.llm_proj(query_visual), "query_visual")
    add(llm_embed(model, model.format_prompts({"text_input": [batch["text_input"][i]]})[0])[0], "prompt")
    return torch.cat(pieces), kinds


def target_ids(model, answer):
    if model.family.encoder_decoder:
        return model.llm_tokenizer(answer).input_ids  # ends with </s>
    # after the (non-empty) prompt, as LAVIS's Blip2OPT tokenizes "<prompt> <answer>\n"
    return model.llm_tokenizer(" " + answer + "\n", add_special_tokens=False).input_ids


# per_frame changes how clips go through the M-Hub: formats that send demo frames there, and the
# query (which every format sends), are covered by mmict and vanilla_ict.
FORMAT_CASES = [(f, "concat") for f in DEMO_FORMATS] + [("mmict", "per_frame"), ("vanilla_ict", "per_frame")]


@pytest.mark.parametrize("demo_format,frame_mode", FORMAT_CASES)
def test_exactly_the_format_features_reach_the_llm(configured, demo_format, frame_mode):
    model = configured(demo_format, frame_mode)
    batch = make_batch()
    with torch.no_grad():
        _, call = llm_inputs(model, batch)
        embeds, mask = call["inputs_embeds"], call["attention_mask"]
        for i in range(B):
            expected, kinds = expected_input(model, batch, i)
            answer = target_ids(model, batch["text_output"][i])
            if not model.family.encoder_decoder:  # OPT reads the target right after the prompt
                expected = torch.cat([expected, model.embed_tokens(torch.tensor(answer))])
                kinds = kinds + ["target"] * len(answer)
            length = expected.shape[0]
            # right padding: real positions first, in order; nothing else is attended
            assert mask[i].tolist() == [1] * length + [0] * (mask.shape[1] - length), (i, kinds)
            assert torch.allclose(embeds[i, :length], expected, atol=1e-5), (i, kinds)
            assert not embeds[i, length:].any()
            if model.family.encoder_decoder:
                labels = call["labels"][i]
                assert labels[labels != IGNORE_INDEX].tolist() == answer
                assert call["decoder_attention_mask"][i].sum() == len(answer)
            else:
                labels = call["labels"][i]
                assert labels[:length - len(answer)].eq(IGNORE_INDEX).all(), "loss only on the target"
                assert labels[length - len(answer):length].tolist() == answer

    # which kinds of features each format sends (sample 0 has two real demos)
    _, kinds = expected_input(model, batch, 0)
    demo_kinds = {k for k in kinds if k.startswith("demo")}
    assert demo_kinds == {"mmict": {"demo_mhub_text"}, "vanilla_ict": {"demo_visual", "demo_text"},
                          "text_only": {"demo_text"}, "none": set()}[demo_format]
    assert kinds.count("separator") == (0 if demo_format == "none" else 2)
    n = model.mhub.num_query_token
    assert kinds.count("query_visual") == (n if frame_mode == "concat" else n * F)
    if demo_format == "vanilla_ict":
        assert kinds.count("demo_visual") == 2 * kinds.count("query_visual")


@pytest.mark.parametrize("demo_format", DEMO_FORMATS)
def test_absent_demos_never_matter_and_real_ones_do(configured, demo_format):
    model = configured(demo_format)

    def llm_input(batch):
        _, call = llm_inputs(model, batch)
        return call["inputs_embeds"]

    with torch.no_grad():
        base = llm_input(make_batch())
        changed = make_batch()
        absent = ~changed["demo_mask"]
        changed["demo_image"][absent] = torch.randn_like(changed["demo_image"][absent]) * 10
        changed["demo_text"] = [[t if real else "garbage text that is long " * 3 for t, real in zip(row, m)]
                                for row, m in zip(changed["demo_text"], changed["demo_mask"].tolist())]
        assert torch.equal(base, llm_input(changed))
        real_text = make_batch()
        real_text["demo_text"][0][0] = "Question: what color is the shape? Short answer: blue"
        real_frames = make_batch()
        real_frames["demo_image"][0, 0] += 1.0
        text_input, frames_input = llm_input(real_text), llm_input(real_frames)
    assert (text_input.shape != base.shape or not torch.allclose(text_input, base)) == (demo_format != "none")
    assert (not torch.allclose(frames_input, base)) == (demo_format in ("mmict", "vanilla_ict"))
    # other samples are untouched by sample 0's demonstrations
    assert torch.allclose(frames_input[1:], base[1:], atol=1e-6)


@pytest.mark.parametrize("demo_format", DEMO_FORMATS)
def test_one_vit_and_one_mhub_call_per_batch(configured, demo_format):
    model = configured(demo_format)
    calls = {"vit": [], "mhub": []}
    hooks = [model.visual_encoder.register_forward_hook(lambda m, i, o: calls["vit"].append(i[0].shape[0])),
             model.mhub.register_forward_hook(lambda m, i, o: calls["mhub"].append(i[0].shape[0]))]
    try:
        with torch.no_grad():
            model(make_batch())
    finally:
        for hook in hooks:
            hook.remove()
    clips = B + (int(make_batch()["demo_mask"].sum()) if demo_format in ("mmict", "vanilla_ict") else 0)
    assert calls == {"vit": [clips * F], "mhub": [clips]}


def test_per_frame_runs_mhub_per_frame_in_one_call(configured):
    model = configured("mmict", "per_frame")
    seen = []
    hook = model.mhub.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    try:
        with torch.no_grad():
            model(make_batch())
    finally:
        hook.remove()
    clips = B + int(make_batch()["demo_mask"].sum())
    (shape,) = seen
    assert shape[0] == clips * F and shape[1] == 1 + (SIZE // 8) ** 2  # one frame's tokens per item


def test_still_images_are_one_frame_clips(configured):
    model = configured("mmict")
    batch = make_batch()
    batch["image"], batch["demo_image"] = batch["image"][:, 0], batch["demo_image"][:, :, 0]
    as_clips = dict(batch, image=batch["image"].unsqueeze(1), demo_image=batch["demo_image"].unsqueeze(2))
    with torch.no_grad():
        assert torch.allclose(model(batch)["loss"], model(as_clips)["loss"])


@pytest.mark.parametrize("model_type", ["tiny", "tiny_t5"])
@pytest.mark.parametrize("key,value,valid", [("demo_format", "mmict_v2", "'mmict', 'vanilla_ict', 'text_only', 'none'"),
                                             ("frame_mode", "stack", "'concat', 'per_frame'")])
def test_unknown_choices_fail_before_building(model_type, key, value, valid, monkeypatch):
    from lavis_mmict import backbones

    monkeypatch.setattr(backbones, "build_vision_encoder", lambda cfg: pytest.fail("built before checking"))
    cfg = OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model
    cfg[key] = value
    with pytest.raises(ValueError, match=f"model.{key} '{value}'; valid: \\[{valid}\\]"):
        MMICTBlip2.from_config(cfg)


def test_num_frames_mismatch_is_a_clear_error(model):
    model.num_frames = F + 1
    try:
        with pytest.raises(ValueError, match=f"model.num_frames is {F + 1} but the batch has {F} frames"):
            model(make_batch())
    finally:
        model.num_frames = None


@pytest.mark.parametrize("model_type", ["tiny", "tiny_t5"])
def test_train_separator_option(model_type):
    def build(**overrides):
        cfg = OmegaConf.load(MMICTBlip2.default_config_path(model_type)).model
        return MMICTBlip2.from_config(OmegaConf.merge(cfg, {"freeze_llm": True, **overrides}))

    torch.manual_seed(0)
    frozen = build()
    assert not hasattr(frozen, "separator_embed")
    row = frozen.llm_model.get_input_embeddings().weight[frozen.separator_id]
    assert torch.equal(frozen.separator_embedding(), row) and not row.requires_grad

    torch.manual_seed(0)
    trainable = build(train_separator=True)
    assert torch.equal(trainable.separator_embed, trainable.llm_model.get_input_embeddings().weight[trainable.separator_id])
    trainable(make_batch())["loss"].backward()
    assert trainable.separator_embed.grad is not None and trainable.separator_embed.grad.abs().sum() > 0
    assert "separator_embed" in {n for n, p in trainable.named_parameters() if p.requires_grad}
