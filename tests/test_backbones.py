"""Backbones from config: the tiny type builds offline through the same code as real types."""
import pytest
import torch
from omegaconf import OmegaConf

from lavis_mmict import backbones
from lavis_mmict.datasets.synthetic import SYNTHETIC_VOCABULARY
from lavis_mmict.models.mmict_blip2 import SEPARATOR_TOKEN, MMICTBlip2


def tiny_config(**overrides):
    cfg = OmegaConf.load(MMICTBlip2.default_config_path("tiny")).model
    return OmegaConf.merge(cfg, overrides)


def test_tiny_parts_build_offline_with_expected_shapes():
    cfg = tiny_config()
    encoder, ln_vision = backbones.build_vision_encoder(cfg)
    features = encoder(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 1 + (32 // 8) ** 2, 48)
    qformer, query_tokens, tokenizer = backbones.build_qformer(cfg, encoder.num_features)
    assert query_tokens.shape == (1, cfg.num_query_token, qformer.config.hidden_size)
    assert qformer.cls is None
    llm, llm_tokenizer, family = backbones.build_llm(cfg, extra_tokens=[SEPARATOR_TOKEN])
    assert family == "opt"
    # spare rows, as OPT's 50272 for 50265 tokens: the separator takes one, nothing is resized
    assert llm.get_input_embeddings().num_embeddings == llm.config.vocab_size > len(llm_tokenizer)
    assert len(llm_tokenizer.tokenize(SEPARATOR_TOKEN)) == 1


def test_qformer_fast_tokenizer_gives_bert_tokenizer_ids():
    """The Q-Former uses BertTokenizerFast for speed; LAVIS's BLIP-2 was trained with BertTokenizer."""
    from transformers import BertTokenizer

    cfg = tiny_config()
    _, _, fast = backbones.build_qformer(cfg, 48)
    assert fast.is_fast
    slow = BertTokenizer.from_pretrained(backbones.resolve_asset_path(cfg.qformer_model))
    texts = ["Question: what colour is the shape? Short answer: red", "a man, riding a horse!", "don't", ""]
    for kwargs in ({}, {"padding": "longest", "truncation": True, "max_length": 8}):
        assert fast(texts, **kwargs).input_ids == slow(texts, **kwargs).input_ids


def test_synthetic_words_are_single_tokens_for_both_tokenizers():
    cfg = tiny_config()
    _, _, bert_tokenizer = backbones.build_qformer(cfg, 48)
    _, opt_tokenizer, _ = backbones.build_llm(cfg)
    for word in SYNTHETIC_VOCABULARY:
        assert bert_tokenizer.tokenize(word) == [word]
        assert len(opt_tokenizer(" " + word, add_special_tokens=False).input_ids) == 1, word


def test_tiny_qformer_reads_bert_base_uncased_word_pieces():
    """The tiny types' Q-Former tokenizer is real BLIP-2's (bert-base-uncased, 30522 entries, one
    embedding row each): ordinary words outside the synthetic set reach M-Hub as words, with
    bert-base-uncased's ids, instead of one token per character."""
    qformer, _, tokenizer = backbones.build_qformer(tiny_config(), 48)
    assert len(tokenizer) == 30522 == qformer.bert.embeddings.word_embeddings.num_embeddings
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 100, 101, 102, 103]
    demo = tokenizer("Question: what is the woman slicing? Short answer: tomatoes")
    assert tokenizer.convert_ids_to_tokens(demo.input_ids) == [
        "[CLS]", "question", ":", "what", "is", "the", "woman", "slicing", "?", "short", "answer", ":",
        "tomatoes", "[SEP]"]
    assert demo.input_ids[3:6] == [2054, 2003, 1996]  # what is the
    assert tokenizer.tokenize("rojo") == ["ro", "##jo"]  # word pieces, as in real BLIP-2 (not r ##o ##j ##o)


def test_tiny_bert_config_follows_its_vocabulary(tmp_path):
    """make_tiny_tokenizers.write_bert rebuilds the shipped tiny_bert files from the shipped vocab
    (vocab_size = its length) and rejects a vocabulary that is not bert-base-uncased's."""
    import json
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "run_scripts", "tools"))
    try:
        import make_tiny_tokenizers as tools
    finally:
        sys.path.pop(0)
    shipped = backbones.resolve_asset_path("assets/tiny_bert")
    tools.write_bert(str(tmp_path), os.path.join(shipped, "vocab.txt"))
    for name in ("vocab.txt", "config.json", "tokenizer_config.json"):
        assert (tmp_path / name).read_bytes() == open(os.path.join(shipped, name), "rb").read(), name
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 30522
    hand_written = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abc")
    with pytest.raises(ValueError, match="30522"):
        tools.check_uncased_bert_vocab(hand_written)
    shuffled = tools.read_bert_vocab(os.path.join(shipped, "vocab.txt"))
    shuffled[100], shuffled[1] = shuffled[1], shuffled[100]
    with pytest.raises(ValueError, match="UNK"):
        tools.check_uncased_bert_vocab(shuffled)


def test_freeze_options():
    frozen = tiny_config(freeze_vit=True, freeze_llm=True)
    encoder, ln_vision = backbones.build_vision_encoder(frozen)
    assert not any(p.requires_grad for p in encoder.parameters())
    assert all(p.requires_grad for p in ln_vision.parameters())
    encoder.train(True)  # a frozen ViT stays in eval mode while the model trains
    assert not encoder.training
    llm, _, _ = backbones.build_llm(frozen, extra_tokens=[SEPARATOR_TOKEN])
    assert not any(p.requires_grad for p in llm.parameters())
    trainable_llm, _, _ = backbones.build_llm(tiny_config(freeze_llm=False))
    assert all(p.requires_grad for p in trainable_llm.parameters())


@pytest.mark.parametrize("key,value", [("vit_model", "vit_huge"), ("qformer_init", "zeros"), ("llm_init", "warm")])
def test_unknown_choices_are_clear_errors(key, value):
    cfg = tiny_config(**{key: value})
    build = {"vit_model": lambda: backbones.build_vision_encoder(cfg),
             "qformer_init": lambda: backbones.build_qformer(cfg, 48),
             "llm_init": lambda: backbones.build_llm(cfg)}[key]
    with pytest.raises(ValueError, match=f"model.{key}"):
        build()


def test_missing_real_weights_fail_at_once_and_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = backbones.VISION_PRESETS["eva_clip_g"]["weights_url"]
    with pytest.raises(backbones.MissingWeightsError) as error:
        backbones.resolve_weights_file(url, "Vision encoder weights (eva_clip_g)", "vit_weights")
    message = str(error.value)
    assert str(tmp_path) in message and "eva_vit_g.pth" in message and "model.vit_weights" in message
    with pytest.raises(backbones.MissingWeightsError, match="model.vit_weights"):
        backbones.resolve_weights_file(str(tmp_path / "nope.pth"), "Vision encoder weights", "vit_weights")


def test_tiny_t5_builds_like_flant5_with_the_separator_in_a_spare_row():
    cfg = tiny_config(llm_model="assets/tiny_t5")
    llm, tokenizer, family = backbones.build_llm(cfg, extra_tokens=[SEPARATOR_TOKEN])
    assert family == "t5" and type(tokenizer).__name__ == "T5TokenizerFast"  # as LAVIS's Blip2T5
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1)
    rows = llm.get_input_embeddings().num_embeddings
    assert rows == llm.config.vocab_size and len(tokenizer) <= rows  # not resized (frozen shapes kept)
    assert tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN) == len(tokenizer) - 1
    assert tokenizer("red").input_ids[-1] == tokenizer.eos_token_id
    for word in SYNTHETIC_VOCABULARY:
        assert len(tokenizer(" " + word, add_special_tokens=False).input_ids) == 1, word


def test_added_tokens_keep_the_tokenizers_own_special_tokens():
    _, tokenizer, _ = backbones.build_llm(tiny_config(llm_model="assets/tiny_t5"))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_id_0>"]})
    llm, _, _ = backbones.build_llm(tiny_config(llm_model="assets/tiny_t5"))
    backbones.add_special_tokens(tokenizer, llm, [SEPARATOR_TOKEN])
    assert tokenizer.additional_special_tokens == ["<extra_id_0>", SEPARATOR_TOKEN]


def test_llm_config_overrides_and_dtype_choice():
    llm, _, _ = backbones.build_llm(tiny_config(llm_model="assets/tiny_t5", llm_config_overrides={"dense_act_fn": "gelu"}))
    assert llm.config.dense_act_fn == "gelu"  # what LAVIS's Blip2T5 sets for FlanT5
    with pytest.raises(ValueError, match="model.llm_dtype"):
        backbones.build_llm(tiny_config(llm_init="pretrained", llm_dtype="fp8"))


def test_missing_local_files_are_named(tmp_path):
    cfg = tiny_config(llm_model=str(tmp_path), llm_init="pretrained")
    (tmp_path / "config.json").write_text("{}")
    problems = backbones.missing_weights(cfg)
    assert len(problems) == 1 and "model.llm_model" in problems[0] and "pytorch_model.bin" in problems[0]
    with pytest.raises(backbones.MissingWeightsError, match="tokenizer.json or vocab.json"):
        backbones.check_weights_available(cfg)
    assert backbones.missing_weights(tiny_config()) == []  # the tiny types need nothing downloaded
