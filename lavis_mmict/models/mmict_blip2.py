"""``mmict_blip2``: BLIP-2 fine-tuned with multi-modal in-context demonstrations (MMICT).

Data flow for a batch of B queries with up to K demonstrations each (see DESIGN.md):
  frozen ViT on every query frame and every demo frame that the format needs, in one call
  -> M-Hub (Q-Former with text) on all queries and demos that need it, in one call
  -> each demonstration becomes LLM input according to ``demo_format``:
       mmict        its M-Hub text-position outputs (visual-guided text features)
       vanilla_ict  its N visual query outputs (no text in the Q-Former) + LLM embeddings of its text
       text_only    LLM embeddings of its text (no vision)
       none         nothing (plain BLIP-2 fine-tuning, K = 0)
  -> LLM input per sample: [demo 1] <sep> ... [demo K] <sep> [query visual] [prompt], packed and
     read by OPT (target after it) or FlanT5 (target as decoder labels) in one LLM call, as
     models/base.py does for both models: loss over the batch's target tokens, or generate().
The query is encoded the same way in every format: M-Hub with its question when
``query_text_in_qformer`` (default: on for mmict and text_only, off for none and vanilla_ict, the
paper's baselines), else BLIP-2's vision-only Q-Former pass.
"""
import logging
import os
from typing import Optional

import torch
import torch.nn as nn
from lavis.common.registry import registry

from lavis_mmict import backbones
from lavis_mmict.models.base import (
    LLM_FAMILIES, SEPARATOR_TOKEN, Blip2ICLModel, EncodedBatch, check_choice, query_clips,
)
from lavis_mmict.models.blip2_checkpoint import (
    QFORMER_TEXT_BRANCH, check_coverage, fit_vocabulary_rows, map_lavis_keys, own_buffers_source,
    read_qformer_text_branch, read_state_dict,
)
from lavis_mmict.models.feature_cache import DemoFeatureCache, cache_from_config
from lavis_mmict.models.mhub import MultiModalHub

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "models")

# What each demonstration format feeds the LLM (module docstring); "none" is plain BLIP-2 (K = 0).
DEMO_FORMATS = ("mmict", "vanilla_ict", "text_only", "none")
# model.query_text_in_qformer when unset: the paper's baselines (none = plain BLIP-2 fine-tuning,
# vanilla_ict) keep the question out of the Q-Former; MMICT's M-Hub reads it.
QUERY_TEXT_IN_QFORMER_DEFAULT = {"mmict": True, "text_only": True, "vanilla_ict": False, "none": False}
# How a clip of F frames meets the Q-Former: one memory of all frames' patch tokens (N query tokens
# per clip, as the MMICT reference), or one M-Hub pass per frame (N x F tokens, as InstructBLIP).
FRAME_MODES = ("concat", "per_frame")


def check_demo_format(demo_format):
    return check_choice(demo_format, DEMO_FORMATS, "demo_format")


def check_frame_mode(frame_mode):
    return check_choice(frame_mode, FRAME_MODES, "frame_mode")


@registry.register_model("mmict_blip2")
class MMICTBlip2(Blip2ICLModel):
    """BLIP-2 (OPT or FlanT5) with MMICT demonstrations. Model types: see PRETRAINED_MODEL_CONFIG_DICT."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": os.path.join(CONFIG_DIR, "mmict_blip2_tiny.yaml"),
        "tiny_t5": os.path.join(CONFIG_DIR, "mmict_blip2_tiny_t5.yaml"),
        "pretrain_opt2.7b": os.path.join(CONFIG_DIR, "mmict_blip2_pretrain_opt2.7b.yaml"),
        "pretrain_opt6.7b": os.path.join(CONFIG_DIR, "mmict_blip2_pretrain_opt6.7b.yaml"),
        "pretrain_flant5xl": os.path.join(CONFIG_DIR, "mmict_blip2_pretrain_flant5xl.yaml"),
        "pretrain_flant5xxl": os.path.join(CONFIG_DIR, "mmict_blip2_pretrain_flant5xxl.yaml"),
        "own_finetuned_opt2.7b": os.path.join(CONFIG_DIR, "mmict_blip2_own_finetuned_opt2.7b.yaml"),
        "own_finetuned_opt6.7b": os.path.join(CONFIG_DIR, "mmict_blip2_own_finetuned_opt6.7b.yaml"),
        "own_finetuned_flant5xl": os.path.join(CONFIG_DIR, "mmict_blip2_own_finetuned_flant5xl.yaml"),
        "own_finetuned_flant5xxl": os.path.join(CONFIG_DIR, "mmict_blip2_own_finetuned_flant5xxl.yaml"),
    }
    default_model_type = "tiny"
    DEMO_FORMATS = DEMO_FORMATS
    # own_finetuned_* load YOUR train.py checkpoint (no MMICT weights were released); old names
    RENAMED_TYPES = {f"finetuned_{size}": f"own_finetuned_{size}"
                     for size in ("opt2.7b", "opt6.7b", "flant5xl", "flant5xxl")}

    def __init__(
        self,
        visual_encoder,
        ln_vision,
        mhub,
        qformer_tokenizer,
        llm_model,
        llm_tokenizer,
        llm_family="opt",
        demo_format="mmict",
        prompt="",
        max_txt_len=32,
        freeze_vit=True,
        frame_mode="concat",
        train_separator=False,
        num_frames=None,
        demo_feature_cache: Optional[DemoFeatureCache] = None,
        query_text_in_qformer=None,
    ):
        family = LLM_FAMILIES[check_choice(llm_family, tuple(LLM_FAMILIES), "llm_model family")]
        super().__init__(visual_encoder, ln_vision, demo_format, family, prompt, max_txt_len)
        self.mhub = mhub
        self.qformer_tokenizer = qformer_tokenizer
        self.llm_model = llm_model
        self.llm_tokenizer = llm_tokenizer
        self.llm_family = llm_family
        self.frame_mode = check_frame_mode(frame_mode)
        self.num_frames = num_frames
        self.freeze_vit = freeze_vit
        if query_text_in_qformer is None:
            query_text_in_qformer = QUERY_TEXT_IN_QFORMER_DEFAULT[self.demo_format]
        self.query_text_in_qformer = bool(query_text_in_qformer)
        self.text_init_keys = set()  # keys loaded from model.qformer_text_init (strict loading's source)
        if not (self.query_text_in_qformer or self.demo_format == "mmict"):
            # nothing reads text in the Q-Former (plain BLIP-2, whose stage 2 has no text branch):
            # frozen, so that DDP sees no trainable parameter without a gradient
            for name, param in mhub.Qformer.named_parameters():
                if QFORMER_TEXT_BRANCH.fullmatch(name):
                    param.requires_grad = False
        # Frozen ViT outputs of demo clips, reused across steps (models/feature_cache.py).
        self.demo_feature_cache = demo_feature_cache or DemoFeatureCache("none")
        if self.demo_feature_cache.enabled and not freeze_vit:
            raise ValueError("model.demo_feature_cache needs a frozen vision encoder (freeze_vit: true): "
                             "a trained ViT's features change every step")
        # New ViT weights (checkpoint loading) must not meet features of the old ones.
        visual_encoder.register_load_state_dict_post_hook(
            lambda module, incompatible: self.demo_feature_cache.forget_encoder())

        self.llm_proj = nn.Linear(
            mhub.Qformer.config.hidden_size, llm_model.get_input_embeddings().embedding_dim
        )
        self.separator_id = llm_tokenizer.convert_tokens_to_ids(SEPARATOR_TOKEN)
        if self.separator_id == llm_tokenizer.unk_token_id:
            raise ValueError(f"the LLM tokenizer lacks the separator {SEPARATOR_TOKEN!r}; build it with "
                             "backbones.build_llm(cfg, extra_tokens=[SEPARATOR_TOKEN])")
        # The reference leaves the separator a frozen random row of the frozen LLM; optionally it is
        # a trainable vector of its own, initialised from that row.
        self.train_separator = train_separator
        if train_separator:
            row = llm_model.get_input_embeddings().weight[self.separator_id].detach().float().clone()
            self.separator_embed = nn.Parameter(row)
        self.answer_end_id = self.answer_end_token_id()

    # ---------------------------------------------------------------- building
    @classmethod
    def default_config_path(cls, model_type=None):
        model_type = model_type or cls.default_model_type
        if model_type in cls.RENAMED_TYPES:
            raise ValueError(f"model_type {model_type!r} was renamed to {cls.RENAMED_TYPES[model_type]!r}: it "
                             "loads your own fine-tuned checkpoint (no MMICT weights were released)")
        if model_type not in cls.PRETRAINED_MODEL_CONFIG_DICT:
            raise ValueError(f"Unknown model_type {model_type!r} for mmict_blip2; valid: "
                             f"{list(cls.PRETRAINED_MODEL_CONFIG_DICT)}")
        return cls.PRETRAINED_MODEL_CONFIG_DICT[model_type]

    @classmethod
    def from_pretrained(cls, model_type=None):
        return super().from_pretrained(model_type or cls.default_model_type)

    @classmethod
    def from_config(cls, cfg):
        # Cheap checks first: a typo or missing weights fail before a 1B-parameter ViT is built.
        demo_format = cls.demo_format_from_config(cfg)
        frame_mode = check_frame_mode(cfg.get("frame_mode", "concat"))
        if cfg.get("load_finetuned", False) and not cfg.get("finetuned", None):
            raise ValueError(
                f"model_type {cfg.get('model_type')!r} loads your own fine-tuned checkpoint (no MMICT weights "
                "were released): set model.finetuned to one your train.py wrote (e.g. "
                "output/<run>/<job_id>/checkpoint_best.pth), "
                "or pass checkpoint=... to lavis_mmict.load_model."
            )
        backbones.check_weights_available(cfg)

        visual_encoder, ln_vision = backbones.build_vision_encoder(cfg)
        qformer, query_tokens, qformer_tokenizer = backbones.build_qformer(cfg, visual_encoder.num_features)
        llm_model, llm_tokenizer, family = backbones.build_llm(cfg, extra_tokens=[SEPARATOR_TOKEN])
        model = cls(
            visual_encoder=visual_encoder,
            ln_vision=ln_vision,
            mhub=MultiModalHub(qformer, query_tokens),
            qformer_tokenizer=qformer_tokenizer,
            llm_model=llm_model,
            llm_tokenizer=llm_tokenizer,
            llm_family=family,
            demo_format=demo_format,
            prompt=cfg.get("prompt", ""),
            max_txt_len=cfg.get("max_txt_len", 32),
            freeze_vit=cfg.get("freeze_vit", True),
            frame_mode=frame_mode,
            train_separator=cfg.get("train_separator", False),
            num_frames=cfg.get("num_frames", None),
            demo_feature_cache=cache_from_config(cfg),
            query_text_in_qformer=cfg.get("query_text_in_qformer", None),
        )
        # stage 1 (the Q-Former's text branch) first: the stage-2 checkpoint lacks it
        if cfg.get("qformer_text_init", None):
            model.load_qformer_text_init(cfg.qformer_text_init)
        if cfg.get("pretrained", None):
            model.load_lavis_checkpoint(cfg.pretrained, config_key="pretrained")
        if cfg.get("load_finetuned", False):
            model.load_trainable_checkpoint(cfg.finetuned)
        return model

    def load_qformer_text_init(self, url_or_path):
        """Load the M-Hub's text branch (word/position embeddings, every layer's text FFN) from LAVIS's
        stage-1 checkpoint ``blip2_pretrained.pth`` (``model.qformer_text_init``)."""
        path, text_branch = read_qformer_text_branch(url_or_path, "mhub.Qformer.", self.state_dict())
        self.load_state_dict(text_branch, strict=False)
        self.text_init_keys = set(text_branch)
        logging.info("loaded the Q-Former text branch (%d tensors) from %s", len(text_branch), path)

    def load_lavis_checkpoint(self, url_or_path, config_key="pretrained"):
        """Load a LAVIS BLIP-2 (``blip2_opt``/``blip2_t5``) or full ``mmict_blip2`` checkpoint, strictly.

        Keys are mapped to ours and vocabulary tables fitted (the separator row stays ours). What the
        checkpoint lacks must come from a named source (models/blip2_checkpoint.py): the frozen ViT's
        and LLM's own weights, the text branch of ``model.qformer_text_init``, the separator row;
        anything else is a CheckpointError naming the file and keys. Returns torch's (missing,
        unexpected) keys.
        """
        path, state_dict = read_state_dict(url_or_path, "BLIP-2 checkpoint", config_key)
        own = self.state_dict()
        state_dict = fit_vocabulary_rows(map_lavis_keys(state_dict), own)
        text_init_keys = self.text_init_keys
        counts = check_coverage(path, config_key, state_dict, own, {
            "the vision encoder's own weights": lambda key: key.startswith("visual_encoder."),
            "the LLM's own weights": lambda key: key.startswith("llm_model."),
            "model.qformer_text_init": lambda key: key in text_init_keys,
            "the LLM's separator row": lambda key: key == "separator_embed",
            **own_buffers_source(self),
        })
        result = self.load_state_dict(state_dict, strict=False)
        logging.info("loaded %s; parameters by source: %s", path, counts)
        return result

    # LAVIS names: `load_model(..., checkpoint=)` calls load_checkpoint, configs call load_from_pretrained.
    def load_checkpoint(self, url_or_filename):
        return self.load_lavis_checkpoint(url_or_filename, config_key="finetuned")

    def load_from_pretrained(self, url_or_filename):
        return self.load_lavis_checkpoint(url_or_filename, config_key="pretrained")

    # ---------------------------------------------------------------- encoders
    def encode_frames(self, frames, cache_keys=None):
        """frames (M, F, 3, H, W) -> per-frame visual tokens (M, F, P, Dv), after ``ln_vision``.

        cache_keys: None, or M strings: a clip with a non-empty key reads its frozen ViT output from
        the demo feature cache (its ``frames`` are then not used) or, on a miss, stores it there.
        """
        return self.ln_vision(self.vit_features(frames, cache_keys))

    def run_vit(self, frames):
        """The frozen ViT on M clips in one call: (M, F, 3, H, W) -> (M, F, P, Dv), before ln_vision."""
        num_items, num_frames = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vit):
            features = self.visual_encoder(frames.flatten(0, 1))
        return features.reshape(num_items, num_frames, *features.shape[1:])

    def vit_fingerprint(self, device):
        """The demo feature cache's (and pool store's) fingerprint of the ViT as it runs on ``device``
        now (call it inside ``encoding_context`` for the autocast dtype of a forward pass)."""
        image_size = getattr(self.visual_encoder.patch_embed, "img_size", None)
        return self.demo_feature_cache.encoder_fingerprint(self.visual_encoder, image_size, torch.device(device))

    def vit_features(self, frames, cache_keys=None):
        """Frozen ViT outputs of M clips: cached ones read, all others computed in one ViT call."""
        cache = self.demo_feature_cache
        if not cache.enabled or not cache_keys or not any(cache_keys):
            return self.run_vit(frames)
        fingerprint = self.vit_fingerprint(frames.device)
        cached = cache.lookup(fingerprint, cache_keys)
        missing = [i for i, features in enumerate(cached) if features is None]
        found = [i for i, features in enumerate(cached) if features is not None]
        parts = []
        if missing:
            computed = self.run_vit(frames[missing] if len(missing) < len(cached) else frames)
            cache.store(fingerprint, [cache_keys[i] for i in missing], computed)
            parts.append(computed)
        if found:
            dtype = parts[0].dtype if parts else cached[found[0]].dtype
            parts.append(torch.stack([cached[i] for i in found]).to(frames.device, dtype, non_blocking=True))
        if not missing or not found:
            return parts[0]
        # Back to the callers' order: position i of the result is clip i.
        order = torch.empty(len(cached), dtype=torch.long)
        order[torch.tensor(missing + found)] = torch.arange(len(cached))
        return torch.cat(parts)[order.to(frames.device)]

    def tokenize_for_qformer(self, texts):
        tokens = self.qformer_tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_txt_len, return_tensors="pt"
        ).to(self.device)
        return tokens.input_ids, tokens.attention_mask

    def run_mhub(self, frame_features, texts, text_visible):
        """One M-Hub pass over M clips.

        frame_features (M, F, P, Dv); texts: M strings; text_visible (M,) bool: False gives a clip
        no text (its queries then equal a vision-only pass; its text outputs are meaningless).
        Returns (query outputs (M, Nq, H), text outputs (M, L, H), text mask (M, L) bool), with
        Nq = N for ``concat`` and N x F for ``per_frame`` (text outputs then averaged over frames).
        """
        num_items, num_frames, num_patches, _ = frame_features.shape
        if not bool(text_visible.any()):  # no text at all: BLIP-2's vision-only Q-Former pass
            return self.run_mhub_without_text(frame_features), None, None
        ids, mask = self.tokenize_for_qformer(texts)
        mask = mask * text_visible.to(mask.dtype).unsqueeze(1)
        if self.frame_mode == "concat":
            memory = frame_features.flatten(1, 2)
        else:
            memory = frame_features.flatten(0, 1)
            ids, mask = ids.repeat_interleave(num_frames, 0), mask.repeat_interleave(num_frames, 0)
        memory_mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        hub = self.mhub(memory, memory_mask, ids, mask)
        queries, text = hub.query_features, hub.text_features
        if self.frame_mode == "per_frame":
            queries = queries.reshape(num_items, num_frames * queries.shape[1], -1)
            text = text.reshape(num_items, num_frames, *text.shape[1:]).mean(dim=1)
            mask = mask[::num_frames]
        return queries, text, mask.bool()

    def run_mhub_without_text(self, frame_features):
        """(M, F, P, Dv) -> query outputs (M, Nq, H) of the Q-Former without text (LAVIS's BLIP-2)."""
        num_items, num_frames = frame_features.shape[:2]
        memory = frame_features.flatten(1, 2) if self.frame_mode == "concat" else frame_features.flatten(0, 1)
        memory_mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        queries = self.mhub(memory, memory_mask).query_features
        return queries.reshape(num_items, -1, queries.shape[-1])

    def llm_text_embeds(self, texts):
        """LLM embeddings of raw texts (no special tokens): (M, L, D) and mask (M, L) bool."""
        tokens = self.llm_tokenizer(
            texts, add_special_tokens=False, padding="longest", truncation=True,
            max_length=self.max_txt_len, return_tensors="pt",
        ).to(self.device)
        return self.embed_tokens(tokens.input_ids), tokens.attention_mask.bool()

    def query_only_outputs(self, image, queries):
        """M-Hub query outputs (B, Nq, H) of the queries' clips, no demo; with their questions when
        ``query_text_in_qformer``."""
        visible = torch.full((image.shape[0],), self.query_text_in_qformer, dtype=torch.bool, device=self.device)
        query_out, _, _ = self.run_mhub(self.encode_frames(image), queries, visible)
        return query_out

    def query_texts(self, samples, batch):
        """The B questions the Q-Former may read (empty strings when the batch has none)."""
        texts = samples.get("text_input")
        if texts is None:
            return [""] * batch
        return [texts] if isinstance(texts, str) else list(texts)

    def encode(self, samples) -> EncodedBatch:
        """One ViT call and one M-Hub call over every query and every real demonstration that the
        demo format sends through them; absent demos (``demo_mask`` False) are never computed."""
        image = query_clips(samples)
        if self.num_frames and image.shape[1] != self.num_frames:
            raise ValueError(f"model.num_frames is {self.num_frames} but the batch has {image.shape[1]} frames "
                             "per clip; make the dataset's num_frames match (or set model.num_frames: null)")
        batch = image.shape[0]
        queries = self.query_texts(samples, batch)
        demos = self.real_demos(samples)
        if demos is None:
            return EncodedBatch(self.llm_proj(self.query_only_outputs(image, queries)))

        if self.demo_format in ("mmict", "vanilla_ict"):
            # Demo clips carry cache keys from the dataset ("" = not cacheable); queries never do
            # (training queries are augmented).
            keys = samples.get("demo_media_key")
            cache_keys = None
            if keys is not None and self.demo_feature_cache.enabled:
                cache_keys = [""] * batch + demos.pick(keys)
            frames = self.encode_frames(torch.cat([image, self.demo_clips(demos, image)]), cache_keys)
            # vanilla ICT demos go through the Q-Former without text (plain BLIP-2 visual tokens).
            visible = torch.ones(frames.shape[0], dtype=torch.bool, device=self.device)
            visible[:batch] = self.query_text_in_qformer
            visible[batch:] = self.demo_format == "mmict"
            qformer_texts = queries + (demos.texts if self.demo_format == "mmict" else [""] * len(demos.texts))
            query_out, text_out, text_mask = self.run_mhub(frames, qformer_texts, visible)
        else:
            query_out = self.query_only_outputs(image, queries)

        if self.demo_format == "mmict":
            real_embeds, real_mask = self.llm_proj(text_out[batch:]), text_mask[batch:]
        elif self.demo_format == "vanilla_ict":
            visual = self.llm_proj(query_out[batch:])
            text, text_mask = self.llm_text_embeds(demos.texts)
            real_embeds = torch.cat([visual, text.to(visual.dtype)], dim=1)
            visual_mask = torch.ones(visual.shape[:2], dtype=torch.bool, device=self.device)
            real_mask = torch.cat([visual_mask, text_mask], dim=1)
        else:  # text_only
            real_embeds, real_mask = self.llm_text_embeds(demos.texts)

        demo_embeds, demo_token_mask = demos.scatter(real_embeds, real_mask)
        query_visual = self.llm_proj(query_out[:batch])
        # Demos and separator meet in the LLM's dtype: the vision side ran in fp16 (bf16 FlanT5).
        dtype = self.llm_dtype()
        return EncodedBatch(query_visual, demo_embeds.to(dtype), demo_token_mask, demos.mask,
                            self.separator_embedding().to(dtype))

    def demo_clips(self, demos, image):
        """The real demos' clips (M, F, 3, H, W). A batch whose demos are all in the pool feature
        store carries none (H = W = 0, models/pool_store.py): zeros the ViT never reads (a view)."""
        clips = demos.clips(image.device)
        if not clips.numel() and clips.shape[-2:] != image.shape[-2:]:
            if self.demo_feature_cache.pool_store is None:
                raise ValueError("the batch's demonstrations carry no frames (a dataset with a pool feature "
                                 "store) but this model has no store: use pool_store.attach_pool_store")
            return image.new_zeros(()).expand(clips.shape[:-2] + image.shape[-2:])
        return clips

    def encoding_context(self):
        # Vision side in fp16 under CUDA AMP, as LAVIS's BLIP-2 (its runner's AMP is fp16), also
        # when the LLM runs in bf16 (FlanT5); no-op on CPU.
        return self.maybe_autocast(torch.float16)

    def separator_embedding(self):
        if self.train_separator:
            return self.separator_embed
        return self.separator_token_embedding()

    def before_llm_call(self):
        """LAVIS keeps fp16/bf16 weights for CUDA; on CPU (no autocast there) they must be float32."""
        if self.device.type == "cpu" and self.llm_dtype() != torch.float32:
            logging.warning("mmict_blip2 on CPU: casting half-precision weights to float32")
            self.float()
