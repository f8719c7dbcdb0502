"""``aim_opt``: AIM's fused demonstration tokens on a frozen BLIP-2 OPT.

AIM (arXiv 2406.07588) was published on Qwen-VL and LLaVA-Next; this is a port to LAVIS's BLIP-2
OPT. Everything of BLIP-2 (ViT, Q-Former, its projection, OPT) stays frozen. For a batch of B
queries with up to K demonstrations each, ``demo_format`` says what a demonstration gives the LLM:

  fused (AIM):  each demonstration is read by the frozen model as ``[visual N][</s> demo text]``
                (one batched LLM pass over all demos not in the Demonstration Bank); the hidden
                states at its text positions, from ``fusion_layer``, are cached (models/demo_bank.py)
                and go through the trainable ``projection``: one fused token per text token.
  raw:          each demonstration is fed as is, ``[visual N][</s> demo text]`` (the usual
                multimodal ICL baseline; same frozen weights, nothing trained).
  none:         zero-shot, no demonstrations.

LLM input per sample: ``[demo 1] <sep> ... [demo K] <sep> [query visual N][</s> prompt]`` (+ the
target when training), packed and read in one LLM call as models/base.py does for both models:
the loss (target tokens only) or ``generate()``. Trained: the projection and, optionally, the
separator vector.

Parameter names follow LAVIS's ``Blip2OPT`` (``visual_encoder``, ``ln_vision``, ``Qformer``,
``query_tokens``, ``opt_proj``, ``opt_model``), so LAVIS BLIP-2 OPT checkpoints load as they are.
"""
import logging
import os

import torch
import torch.nn as nn
from lavis.common.registry import registry
from torch.nn.utils.rnn import pad_sequence

from lavis_mmict import backbones
from lavis_mmict.models.base import LLM_FAMILIES, SEPARATOR_TOKEN, Blip2ICLModel, EncodedBatch, query_clips
from lavis_mmict.models.blip2_checkpoint import load_same_names
from lavis_mmict.models.demo_bank import DemoBank, demo_bank_keys, module_fingerprint

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "models")

PROJECTIONS = ("linear", "mlp")
# Changes whenever what the reading pass computes changes (invalidates every bank entry).
READING_FORMAT = "visual+bos+text/1"


def build_projection(kind, in_dim, out_dim):
    """Hidden states (in_dim) -> LLM input embeddings (out_dim): ``linear`` or a 2-layer ``mlp``."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"Unknown model.projection {kind!r}; valid: {list(PROJECTIONS)}")


def build_demo_bank(cfg):
    """A DemoBank from the ``demo_bank`` config block, or None when ``enabled: false``."""
    bank_cfg = dict(cfg or {})
    known = {"enabled", "max_items", "disk_dir", "log_every"}
    unknown = sorted(set(bank_cfg) - known)
    if unknown:
        raise ValueError(f"Unknown key(s) under model.demo_bank: {unknown}; valid: {sorted(known)}")
    if not bank_cfg.get("enabled", True):
        return None
    return DemoBank(
        max_items=int(bank_cfg.get("max_items", 10000)),
        disk_dir=bank_cfg.get("disk_dir") or None,
        log_every=int(bank_cfg.get("log_every", 1000)),
    )


@registry.register_model("aim_opt")
class AIMOpt(Blip2ICLModel):
    """BLIP-2 OPT with AIM's fused demonstrations. Model types: see PRETRAINED_MODEL_CONFIG_DICT."""

    PRETRAINED_MODEL_CONFIG_DICT = {
        "tiny": os.path.join(CONFIG_DIR, "aim_opt_tiny.yaml"),
        "pretrain_opt2.7b": os.path.join(CONFIG_DIR, "aim_opt_pretrain_opt2.7b.yaml"),
        "pretrain_opt6.7b": os.path.join(CONFIG_DIR, "aim_opt_pretrain_opt6.7b.yaml"),
        "caption_coco_opt2.7b": os.path.join(CONFIG_DIR, "aim_opt_caption_coco_opt2.7b.yaml"),
        "caption_coco_opt6.7b": os.path.join(CONFIG_DIR, "aim_opt_caption_coco_opt6.7b.yaml"),
    }
    default_model_type = "tiny"
    DEMO_FORMATS = ("fused", "raw", "none")  # see the module docstring

    def __init__(self, visual_encoder, ln_vision, Qformer, query_tokens, opt_model, opt_tokenizer,
                 demo_format="fused", fusion_layer=-1, projection="linear", separator=SEPARATOR_TOKEN,
                 train_separator=True, prompt="", max_txt_len=32, demo_bank=None,
                 freeze_vit=True, freeze_qformer=True, freeze_llm=True):
        super().__init__(visual_encoder, ln_vision, demo_format, LLM_FAMILIES["opt"], prompt, max_txt_len)
        self.Qformer = Qformer
        self.query_tokens = query_tokens
        self.opt_model = opt_model
        self.opt_tokenizer = opt_tokenizer
        llm_config = opt_model.config
        self.opt_proj = nn.Linear(Qformer.config.hidden_size, llm_config.word_embed_proj_dim)
        num_states = llm_config.num_hidden_layers + 1  # embeddings, then one per decoder layer
        if not -num_states <= int(fusion_layer) < num_states:
            raise ValueError(
                f"model.fusion_layer={fusion_layer} is out of range for an LLM with "
                f"{llm_config.num_hidden_layers} layers (valid: {-num_states}..{num_states - 1})"
            )
        self.fusion_layer = int(fusion_layer) % num_states
        self.demo_bank = demo_bank

        # The last hidden state is after OPT's output projection (word_embed_proj_dim) if it has one.
        is_last = self.fusion_layer == num_states - 1
        state_dim = llm_config.word_embed_proj_dim if is_last else llm_config.hidden_size
        self.projection = build_projection(projection, state_dim, llm_config.word_embed_proj_dim)
        self.projection_kind = projection

        self.separator = separator
        self.separator_id = self._separator_token_id(separator)
        self.separator_embed = nn.Parameter(self.token_embedding_row(self.separator_id))
        # Answers end with a newline, as LAVIS's BLIP-2 OPT was trained; generation stops there.
        self.answer_end_id = self.answer_end_token_id()

        # What trains: AIM trains only its projection (+ separator); the base stays frozen unless a
        # freeze_* switch says otherwise (e.g. the tiny demo's stand-in for BLIP-2 pre-training).
        self.freeze_vit, self.freeze_qformer, self.freeze_llm = freeze_vit, freeze_qformer, freeze_llm
        self._set_trainable(self.visual_encoder, not freeze_vit)
        for part in (self.ln_vision, self.Qformer, self.opt_proj):
            self._set_trainable(part, not freeze_qformer)
        self.query_tokens.requires_grad = not freeze_qformer
        self._set_trainable(self.opt_model, not freeze_llm)
        # AIM's own parameters train in every mode, so a raw/none model still has some (DDP
        # refuses a model without); only fused mode uses them.
        self.separator_embed.requires_grad = bool(train_separator)
        self.train_separator = bool(train_separator)

        self._fingerprint = None
        self._warned_bank_off = False
        self.train(False)

    # The base reads the LLM as llm_model / llm_tokenizer; the modules keep LAVIS Blip2OPT's names
    # so that its checkpoints load as they are.
    @property
    def llm_model(self):
        return self.opt_model

    @property
    def llm_tokenizer(self):
        return self.opt_tokenizer

    # ---------------------------------------------------------------- building
    @staticmethod
    def _set_trainable(module, trainable):
        for param in module.parameters():
            param.requires_grad = trainable

    def _separator_token_id(self, separator):
        ids = self.opt_tokenizer(separator, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(
                f"model.separator {separator!r} is not one token of the LLM tokenizer "
                f"(it gives {len(ids)}); use a single token or let from_config add it"
            )
        return ids[0]

    def token_embedding_row(self, token_id):
        return self.opt_model.get_input_embeddings().weight[token_id].detach().clone().float()

    @classmethod
    def from_config(cls, cfg):
        demo_format = cls.demo_format_from_config(cfg)
        backbones.check_weights_available(cfg)  # one clear error before minutes of building
        visual_encoder, ln_vision = backbones.build_vision_encoder(cfg)
        Qformer, query_tokens, _ = backbones.build_qformer(cfg, visual_encoder.num_features)
        # BLIP-2 OPT's Q-Former reads no text: drop its text-only parts, as LAVIS's Blip2OPT does.
        Qformer.bert.embeddings.word_embeddings = None
        Qformer.bert.embeddings.position_embeddings = None
        for layer in Qformer.bert.encoder.layer:
            layer.output = None
            layer.intermediate = None
        opt_model, opt_tokenizer, family = backbones.build_llm(cfg)
        if family != "opt":
            raise ValueError(f"aim_opt needs an OPT LLM; model.llm_model is a {family!r} model")
        separator = cfg.get("separator", SEPARATOR_TOKEN)
        if len(opt_tokenizer(separator, add_special_tokens=False).input_ids) != 1:
            # a spare row of the table when it has one (OPT: 50272 rows for 50265 tokens), as mmict_blip2
            backbones.add_special_tokens(opt_tokenizer, opt_model, [separator])
        model = cls(
            visual_encoder=visual_encoder,
            ln_vision=ln_vision,
            Qformer=Qformer,
            query_tokens=query_tokens,
            opt_model=opt_model,
            opt_tokenizer=opt_tokenizer,
            demo_format=demo_format,
            fusion_layer=cfg.get("fusion_layer", -1),
            projection=cfg.get("projection", "linear"),
            separator=separator,
            train_separator=cfg.get("train_separator", True),
            prompt=cfg.get("prompt", ""),
            max_txt_len=cfg.get("max_txt_len", 32),
            demo_bank=build_demo_bank(cfg.get("demo_bank", None)),
            freeze_vit=cfg.get("freeze_vit", True),
            freeze_qformer=cfg.get("freeze_qformer", True),
            freeze_llm=cfg.get("freeze_llm", True),
        )
        # `pretrained` and LAVIS's `finetuned` give the frozen BLIP-2 base; AIM's own parameters
        # come from our runner checkpoints (run.eval_ckpt_path / load_trainable_checkpoint).
        for key in ("pretrained", "finetuned"):
            if cfg.get(key) and (key == "pretrained" or cfg.get("load_finetuned", False)):
                model.load_base_checkpoint(cfg.get(key), key)
        # the separator starts as the (possibly just loaded) LLM's own embedding of its token
        model.separator_embed.data.copy_(model.token_embedding_row(model.separator_id))
        return model

    @staticmethod
    def is_aim_parameter(name):
        """AIM's own parameters (projection, separator), never taken from a base checkpoint, under
        any ``model.projection`` (a base trained by train.py holds its own projection, e.g. linear,
        which an mlp model neither reads nor expects)."""
        return name == "separator_embed" or name.startswith("projection.")

    def aim_parameter_names(self):
        """Names of this model's AIM parameters."""
        return {name for name, _ in self.named_parameters() if self.is_aim_parameter(name)}

    def load_base_checkpoint(self, url_or_path, config_key="pretrained"):
        """Load the base's weights from a LAVIS BLIP-2 OPT checkpoint (or one of our runner
        checkpoints, e.g. a base trained with freeze_* off), strictly (models/blip2_checkpoint.py):
        AIM's own parameters are skipped, the frozen ViT and OPT may come from their own weights,
        anything else the file lacks, has extra or shapes otherwise is a CheckpointError.

        Returns the set of keys loaded. LAVIS's parameter names are this model's names.
        """
        # (a runner checkpoint holds parameters only: load_same_names takes buffers as the model's own)
        return load_same_names(self, url_or_path, "BLIP-2 OPT checkpoint", config_key,
                               skip=self.is_aim_parameter, sources={
                                   "the vision encoder's own weights": lambda key: key.startswith("visual_encoder."),
                                   "the LLM's own weights": lambda key: key.startswith("opt_model."),
                               })

    # ---------------------------------------------------------------- frozen parts
    def base_modules(self):
        """The frozen MLLM's parts that read demonstrations (name, module)."""
        return [("visual_encoder", self.visual_encoder), ("ln_vision", self.ln_vision),
                ("Qformer", self.Qformer), ("opt_proj", self.opt_proj), ("opt_model", self.opt_model)]

    def base_is_frozen(self):
        params = [self.query_tokens] + [p for _, m in self.base_modules() for p in m.parameters()]
        return not any(p.requires_grad for p in params)

    def train(self, mode=True):
        """Frozen parts stay in eval mode (no dropout): their outputs, and the bank, stay exact."""
        super().train(mode)
        frozen = {"visual_encoder": self.freeze_vit, "opt_model": self.freeze_llm}
        for name, module in self.base_modules():
            if frozen.get(name, self.freeze_qformer):
                nn.Module.train(module, False)
        return self

    def _apply(self, fn, *args, **kwargs):
        self._fingerprint = None  # dtype or device changes change the features
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict=True, **kwargs):
        self._fingerprint = None
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def fingerprint(self):
        """Hash of everything the demo features depend on (see demo_bank.module_fingerprint)."""
        if self._fingerprint is None:
            tensors = [("query_tokens", self.query_tokens)]
            for prefix, module in self.base_modules():
                tensors += [(f"{prefix}.{n}", t) for n, t in module.state_dict().items()]
            # the device type also says whether the reading pass runs under fp16 autocast (CUDA)
            self._fingerprint = module_fingerprint(tensors, extra=(
                type(self).__name__, READING_FORMAT, self.fusion_layer, self.max_txt_len,
                self.opt_tokenizer.name_or_path, len(self.opt_tokenizer), self.device.type,
            ))
        return self._fingerprint

    # ---------------------------------------------------------------- encoders
    def encode_visual(self, frames):
        """frames (M, F, 3, H, W) -> N visual tokens per item in the LLM space (M, N, D).

        All F frames' patch tokens form one Q-Former memory (frames concatenated, as in mmict_blip2).
        """
        num_items, num_frames = frames.shape[:2]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vit):
            patches = self.visual_encoder(frames.flatten(0, 1))
        memory = self.ln_vision(patches).reshape(num_items, num_frames * patches.shape[1], -1)
        memory_mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        queries = self.query_tokens.expand(num_items, -1, -1)
        query_output = self.Qformer.bert(
            query_embeds=queries, encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
            return_dict=True,
        ).last_hidden_state
        return self.opt_proj(query_output)

    def tokenize_demo_texts(self, texts):
        """``</s> text`` per demo, right-padded: ids and mask (M, 1 + L); max_txt_len text tokens."""
        tokens = self.opt_tokenizer(
            list(texts), padding="longest", truncation=True, max_length=self.max_txt_len + 1,
            return_tensors="pt",
        ).to(self.device)
        return tokens.input_ids, tokens.attention_mask.bool()

    def raw_demo_embeds(self, demo_visual, texts):
        """What the frozen model reads for each demo: [visual N][</s> text] -> (M, N+1+L, D), mask."""
        ids, text_mask = self.tokenize_demo_texts(texts)
        embeds = torch.cat([demo_visual, self.embed_tokens(ids).to(demo_visual.dtype)], dim=1)
        visual_mask = torch.ones(demo_visual.shape[:2], dtype=torch.bool, device=self.device)
        return embeds, torch.cat([visual_mask, text_mask], dim=1), text_mask

    def read_demos(self, demo_visual, texts):
        """One frozen LLM pass over M demos -> list of M hidden-state tensors (L_i, H) at their
        text positions (the ``</s>`` and padding excluded), from layer ``fusion_layer``."""
        embeds, mask, text_mask = self.raw_demo_embeds(demo_visual, texts)
        outputs = self.opt_model.model.decoder(
            inputs_embeds=embeds, attention_mask=mask.long(), output_hidden_states=True, return_dict=True,
        )
        start = demo_visual.shape[1] + 1
        hidden = outputs.hidden_states[self.fusion_layer][:, start:]
        lengths = text_mask[:, 1:].sum(dim=1).tolist()
        return [hidden[i, :length] for i, length in enumerate(lengths)]

    def bank_lookup(self, demo_frames, demo_texts, media_keys=None):
        """Look M demos up in the bank, keyed by their media keys (M strings or None; "" = none:
        then by their pixels, see demo_bank.demo_bank_keys).

        Returns ((cached states or None per demo, content keys, fingerprint) or None when the bank
        is off, indices of the demos the model must read).
        """
        bank = self.demo_bank
        if bank is not None and not self.base_is_frozen():
            if not self._warned_bank_off:
                logging.warning("aim_opt: demo bank bypassed, the base model is not frozen")
                self._warned_bank_off = True
            bank = None
        if bank is None:
            return None, list(range(len(demo_texts)))
        fingerprint = self.fingerprint()
        keys = demo_bank_keys(demo_frames, demo_texts, media_keys)
        cached = bank.lookup(fingerprint, keys)
        missing = [i for i, value in enumerate(cached) if value is None]
        return (cached, keys, fingerprint), missing


    # ---------------------------------------------------------------- what the LLM reads
    def encode(self, samples) -> EncodedBatch:
        """Visual tokens of the queries and each sample's demonstrations as the LLM will see them:
        ``fused`` (projected hidden states, then ``separator_embed``), ``raw`` ([visual][</s> text],
        then the LLM's own separator embedding) or ``none`` (no demonstrations)."""
        image = query_clips(samples)
        batch = image.shape[0]
        demos = self.real_demos(samples)
        base_grad = torch.is_grad_enabled() and not self.base_is_frozen()
        if demos is None:
            with torch.set_grad_enabled(base_grad):
                return EncodedBatch(self.encode_visual(image))

        bank_state, missing = (None, list(range(len(demos.texts))))
        if self.demo_format == "fused":
            # views of each demo's frames: demos the bank holds are never copied
            demo_image = demos.all_clips()
            media_keys = demos.pick(samples["demo_media_key"]) if "demo_media_key" in samples else None
            bank_state, missing = self.bank_lookup([demo_image[b, k] for b, k in demos.pairs], demos.texts,
                                                   media_keys)

        # One ViT + Q-Former call over the queries and the demos that must be read.
        with torch.set_grad_enabled(base_grad):
            frames = torch.cat([image, demos.clips(image.device, missing)], dim=0) if missing else image
            visual = self.encode_visual(frames)
        query_visual, missing_visual = visual[:batch], visual[batch:]

        if self.demo_format == "raw":
            real_embeds, real_mask, _ = self.raw_demo_embeds(missing_visual, demos.texts)
            separator = self.separator_token_embedding()
        else:
            real_embeds, real_mask = self.fused_demo_embeds(missing_visual, demos.texts, missing, bank_state,
                                                            base_grad)
            separator = self.separator_embed
        demo_embeds, demo_token_mask = demos.scatter(real_embeds, real_mask)
        return EncodedBatch(query_visual, demo_embeds, demo_token_mask, demos.mask, separator)

    def fused_demo_embeds(self, missing_visual, texts, missing, bank_state, base_grad):
        """AIM's fused tokens of M demos -> (M, L, D) and mask (M, L) bool: hidden states at each
        text position, read by the frozen LLM or found in the bank, through ``projection``.

        missing_visual: visual tokens of the demos ``missing`` (indices into the M) the model reads;
        bank_state: ``bank_lookup``'s first result (the others come from there; read ones go there).
        """
        with torch.set_grad_enabled(base_grad):
            read = self.read_demos(missing_visual, [texts[i] for i in missing]) if missing else []
        states = [None] * len(texts)
        for i, state in zip(missing, read):
            states[i] = state
        if bank_state is not None:
            cached, keys, fingerprint = bank_state
            self.demo_bank.store(fingerprint, [keys[i] for i in missing], read)
            states = [state if state is not None else cached[i].to(self.device)
                      for i, state in enumerate(states)]
        lengths = torch.tensor([state.shape[0] for state in states], device=self.device)
        padded = pad_sequence(states, batch_first=True)  # (M, L, H)
        real_mask = torch.arange(padded.shape[1], device=self.device)[None, :] < lengths[:, None]
        return self.projection(padded.to(self.projection_dtype())), real_mask

    def projection_dtype(self):
        return next(self.projection.parameters()).dtype
