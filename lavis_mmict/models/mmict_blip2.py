"""``mmict_blip2``: BLIP-2 fine-tuned with multi-modal in-context demonstrations (MMICT).

Data flow for a batch of B queries with up to K demonstrations each (see DESIGN.md):
  frozen ViT on every query and demo frame in one call
  -> M-Hub (Q-Former with text) on all B + (real demos) items in one call
  -> demos give their text-position outputs, the query its N query outputs
  -> LLM input per sample: [demo 1] <sep> ... [demo K] <sep> [query visual N] [prompt] (+ target)
  -> one LLM call: loss over the batch's target tokens, or generate().
"""
import logging
import os

import torch
import torch.nn as nn
from lavis.common.registry import registry
from lavis.models.blip2_models.blip2 import Blip2Base

from lavis_mmict import backbones
from lavis_mmict.checkpoints import load_trainable_state_dict, read_checkpoint
from lavis_mmict.models.mhub import MultiModalHub
from lavis_mmict.models.sequence import NO_TOKEN, IGNORE_INDEX, Segment, demo_segment, pack_segments

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "models")

SEPARATOR_TOKEN = "<|endofchunk|>"

# What each demonstration format feeds the LLM; "none" is plain BLIP-2 fine-tuning (K = 0).
DEMO_FORMATS = ("mmict", "none")

# LAVIS BLIP-2 checkpoint key prefixes -> ours (one model class serves OPT and T5).
LAVIS_KEY_PREFIXES = {
    "Qformer.": "mhub.Qformer.",
    "query_tokens": "mhub.query_tokens",
    "opt_proj.": "llm_proj.",
    "opt_model.": "llm_model.",
    "t5_proj.": "llm_proj.",
    "t5_model.": "llm_model.",
}


def check_demo_format(demo_format):
    if demo_format not in DEMO_FORMATS:
        raise ValueError(f"Unknown model.demo_format {demo_format!r}; valid: {list(DEMO_FORMATS)}")
    return demo_format


def map_lavis_keys(state_dict):
    """Rename a LAVIS BLIP-2 state dict's keys to this model's names."""
    mapped = {}
    for key, value in state_dict.items():
        for old, new in LAVIS_KEY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        mapped[key] = value
    return mapped


@registry.register_model("mmict_blip2")
class MMICTBlip2(Blip2Base):
    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": os.path.join(CONFIG_DIR, "mmict_blip2_tiny.yaml"),
    }
    default_model_type = "tiny"

    def __init__(
        self,
        visual_encoder,
        ln_vision,
        mhub,
        qformer_tokenizer,
        llm_model,
        llm_tokenizer,
        demo_format="mmict",
        prompt="",
        max_txt_len=32,
        freeze_vit=True,
    ):
        super().__init__()
        self.visual_encoder = visual_encoder
        self.ln_vision = ln_vision
        self.mhub = mhub
        self.qformer_tokenizer = qformer_tokenizer
        self.llm_model = llm_model
        self.llm_tokenizer = llm_tokenizer
        self.demo_format = check_demo_format(demo_format)
        self.prompt = prompt
        self.max_txt_len = max_txt_len
        self.freeze_vit = freeze_vit

        self.llm_proj = nn.Linear(
            mhub.Qformer.config.hidden_size, llm_model.get_input_embeddings().embedding_dim
        )
        self.separator_id = llm_tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)
        # Answers end with a newline, as LAVIS's BLIP-2 OPT was trained; generation stops there.
        self.answer_end = "\n"
        self.answer_end_id = llm_tokenizer(self.answer_end, add_special_tokens=False).input_ids[0]

    # ---------------------------------------------------------------- building
    @classmethod
    def from_config(cls, cfg):
        visual_encoder, ln_vision = backbones.build_vision_encoder(cfg)
        qformer, query_tokens, qformer_tokenizer = backbones.build_qformer(cfg, visual_encoder.num_features)
        llm_model, llm_tokenizer, family = backbones.build_llm(cfg, extra_tokens=[SEPARATOR_TOKEN])
        if family != "opt":
            raise NotImplementedError(f"mmict_blip2 supports OPT LLMs for now, got {family!r}")
        model = cls(
            visual_encoder=visual_encoder,
            ln_vision=ln_vision,
            mhub=MultiModalHub(qformer, query_tokens),
            qformer_tokenizer=qformer_tokenizer,
            llm_model=llm_model,
            llm_tokenizer=llm_tokenizer,
            demo_format=cfg.get("demo_format", "mmict"),
            prompt=cfg.get("prompt", ""),
            max_txt_len=cfg.get("max_txt_len", 32),
            freeze_vit=cfg.get("freeze_vit", True),
        )
        for key in ("pretrained", "finetuned"):
            if cfg.get(key):
                model.load_lavis_checkpoint(cfg.get(key), config_key=key)
        return model

    def load_lavis_checkpoint(self, url_or_path, config_key="pretrained"):
        """Load a LAVIS BLIP-2 (or our own) checkpoint; keys are mapped, the rest stays as built."""
        path = backbones.resolve_weights_file(url_or_path, "BLIP-2 checkpoint", config_key)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = map_lavis_keys(checkpoint.get("model", checkpoint))
        result = self.load_state_dict(state_dict, strict=False)
        logging.info("loaded %s; missing keys: %d; unexpected: %s", path, len(result.missing_keys), result.unexpected_keys)
        return result

    def load_trainable_checkpoint(self, path):
        """Load a checkpoint written by our runners (trainable parameters only), checked first."""
        checkpoint = read_checkpoint(path)
        return load_trainable_state_dict(self, checkpoint["model"], source=path)

    # ---------------------------------------------------------------- encoders
    def encode_visual(self, frames):
        """frames (M, F, 3, H, W) -> visual memory (M, F * tokens, Dv) with all F frames' tokens
        concatenated (one cross-attention memory per clip), and its mask (M, F * tokens)."""
        num_items, num_frames = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vit):
            features = self.visual_encoder(frames.flatten(0, 1))
        features = self.ln_vision(features).reshape(num_items, num_frames * features.shape[1], -1)
        mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
        return features, mask

    def tokenize_for_qformer(self, texts):
        tokens = self.qformer_tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_txt_len, return_tensors="pt"
        ).to(self.device)
        return tokens.input_ids, tokens.attention_mask

    def encode_query_and_demos(self, samples):
        """One ViT call and one M-Hub call over every query and every real demonstration.

        Returns (query_visual (B, N, D_llm), demo_embeds (B, K, L, D_llm) or None,
        demo_token_mask (B, K, L) or None, demo_mask (B, K) or None).
        """
        image = samples["image"]
        if image.dim() == 4:  # a batch of still images is a batch of one-frame clips
            image = image.unsqueeze(1)
        batch = image.shape[0]
        queries = list(samples["text_input"])
        use_demos = self.demo_format == "mmict" and samples.get("demo_mask") is not None
        if use_demos:
            demo_mask = samples["demo_mask"].to(self.device).bool()
            use_demos = bool(demo_mask.any())
        frames, texts = image, queries
        if use_demos:
            sample_index, demo_index = demo_mask.nonzero(as_tuple=True)
            demo_image = samples["demo_image"]
            if demo_image.dim() == 5:
                demo_image = demo_image.unsqueeze(2)
            frames = torch.cat([image, demo_image[sample_index, demo_index]], dim=0)
            demo_texts = samples["demo_text"]
            texts = queries + [demo_texts[b][k] for b, k in zip(sample_index.tolist(), demo_index.tolist())]

        memory, memory_mask = self.encode_visual(frames)
        ids, mask = self.tokenize_for_qformer(texts)
        hub = self.mhub(memory, memory_mask, ids, mask)
        query_visual = self.llm_proj(hub.query_features[:batch])
        if not use_demos:
            return query_visual, None, None, None

        real_demo_embeds = self.llm_proj(hub.text_features[batch:])
        real_demo_mask = hub.text_mask[batch:]
        # Scatter the real demos back to their (sample, slot) places; absent slots stay masked.
        num_slots, length = demo_mask.shape[1], real_demo_embeds.shape[1]
        demo_embeds = real_demo_embeds.new_zeros(batch, num_slots, length, real_demo_embeds.shape[-1])
        demo_token_mask = torch.zeros(batch, num_slots, length, dtype=torch.bool, device=self.device)
        demo_embeds[sample_index, demo_index] = real_demo_embeds
        demo_token_mask[sample_index, demo_index] = real_demo_mask
        return query_visual, demo_embeds, demo_token_mask, demo_mask

    # ---------------------------------------------------------------- LLM inputs
    def format_prompts(self, samples, prompt=None):
        """The LLM prompt of each query: ``prompt`` with ``{}`` filled by ``text_input``."""
        template = self.prompt if prompt is None or prompt == "" else prompt
        texts = samples["text_input"]
        if isinstance(texts, str):
            texts = [texts]
        if "{}" in template:
            return [template.format(text) for text in texts]
        return [template or text for text in texts]

    def embed_tokens(self, ids):
        return self.llm_model.get_input_embeddings()(ids)

    def prompt_segment(self, prompts):
        tokens = self.llm_tokenizer(
            prompts, padding="longest", truncation=True, max_length=self.max_txt_len, return_tensors="pt"
        ).to(self.device)
        ids = tokens.input_ids
        return Segment(self.embed_tokens(ids), tokens.attention_mask.bool(), token_ids=ids)

    def target_segment(self, answers):
        tokens = self.llm_tokenizer(
            [answer + self.answer_end for answer in answers],
            add_special_tokens=False,
            padding="longest",
            truncation=True,
            max_length=self.max_txt_len,
            return_tensors="pt",
        ).to(self.device)
        mask = tokens.attention_mask.bool()
        labels = tokens.input_ids.masked_fill(~mask, IGNORE_INDEX)
        return Segment(self.embed_tokens(tokens.input_ids), mask, labels=labels, token_ids=tokens.input_ids)

    def prefix_segments(self, samples, prompt=None):
        """[demos with separators] [query visual tokens] [prompt] for every sample."""
        query_visual, demo_embeds, demo_token_mask, demo_mask = self.encode_query_and_demos(samples)
        segments = []
        if demo_embeds is not None:
            separator = self.embed_tokens(torch.tensor(self.separator_id, device=self.device))
            segments.append(demo_segment(demo_embeds, demo_token_mask, demo_mask, separator))
        visual_mask = torch.ones(query_visual.shape[:2], dtype=torch.bool, device=self.device)
        segments.append(Segment(query_visual, visual_mask))
        segments.append(self.prompt_segment(self.format_prompts(samples, prompt)))
        return segments

    # ---------------------------------------------------------------- training
    def forward(self, samples):
        """Returns {"loss"}: cross-entropy averaged over the batch's target tokens only."""
        # One autocast region (CUDA only) around everything: fp16 ViT features must meet the
        # fp32 Q-Former inside autocast, as in LAVIS's BLIP-2.
        with self.maybe_autocast():
            segments = self.prefix_segments(samples)
            segments.append(self.target_segment(samples["text_output"]))
            packed = pack_segments(segments, padding_side="right")
            outputs = self.llm_model(
                inputs_embeds=packed.embeds,
                attention_mask=packed.attention_mask,
                labels=packed.labels,
                return_dict=True,
            )
        return {"loss": outputs.loss}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def generate(
        self,
        samples,
        use_nucleus_sampling=False,
        num_beams=5,
        max_length=30,
        min_length=1,
        top_p=0.9,
        repetition_penalty=1.0,
        length_penalty=1.0,
        num_captions=1,
        temperature=1.0,
        prompt=None,
    ):
        """Batched generation with each sample's demonstrations; returns B * num_captions strings."""
        with self.maybe_autocast():
            packed = pack_segments(self.prefix_segments(samples, prompt), padding_side="left")
            # LAVIS's OPT generates from `query_embeds` followed by `input_ids`: every sample's last
            # position is a prompt token (left padding), so it becomes the single input id.
            last_ids = packed.token_ids[:, -1:]
            assert bool((last_ids != NO_TOKEN).all()), "the prompt must end every LLM prefix"
            expand = num_captions if use_nucleus_sampling else max(num_beams, 1)
            outputs = self.llm_model.generate(
                input_ids=last_ids,
                query_embeds=packed.embeds[:, :-1].repeat_interleave(expand, dim=0),
                attention_mask=packed.attention_mask,
                do_sample=use_nucleus_sampling,
                top_p=top_p,
                temperature=temperature,
                num_beams=1 if use_nucleus_sampling else num_beams,
                max_length=max_length + 1,
                min_length=min_length + 1,
                eos_token_id=self.answer_end_id,
                pad_token_id=self.llm_tokenizer.pad_token_id,
                repetition_penalty=repetition_penalty,
                length_penalty=length_penalty,
                num_return_sequences=num_captions,
            )
        texts = self.llm_tokenizer.batch_decode(outputs[:, 1:], skip_special_tokens=True)
        return [text.strip() for text in texts]

    def predict_answers(
        self,
        samples,
        num_beams=5,
        inference_method="generate",
        max_len=10,
        min_len=1,
        num_ans_candidates=128,
        answer_list=None,
        prompt="",
        length_penalty=0,
        **kwargs,
    ):
        """Open-ended answers (one string per query), generated with the query's demonstrations."""
        if inference_method != "generate":
            raise ValueError(f"mmict_blip2 answers by generation only, got inference_method={inference_method!r}")
        return self.generate(
            samples,
            num_beams=num_beams,
            max_length=max_len,
            min_length=min_len,
            length_penalty=length_penalty,
            prompt=prompt,
        )
