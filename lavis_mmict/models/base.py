"""What ``mmict_blip2`` and ``aim_opt`` share: a BLIP-2 whose LLM reads in-context demonstrations.

A model subclasses ``Blip2ICLModel`` and writes one method, ``encode(samples) -> EncodedBatch``:
each query's visual tokens and each demonstration as LLM input embeddings. The base does the rest,
the same for both models and both LLM families:

  encode (the model's own; ``real_demos`` gathers the demos that exist, ``RealDemos.scatter`` puts
          their embeddings back in their (sample, slot) places)
  -> per sample [demo 1] <sep> ... [demo K] <sep> [query visual] [prompt] (+ target), packed by
     models/sequence.py
  -> one LLM call: ``forward`` (loss over the target tokens) or ``generate`` / ``predict_answers``.

What differs between the models is data and small hooks: ``DEMO_FORMATS`` (the first is the
default), ``family`` (an ``LLMFamily``: OPT or FlanT5), ``encoding_context`` (autocast around the
encoders) and ``before_llm_call``. The base reads the LLM and its tokenizer as ``llm_model`` and
``llm_tokenizer`` (aim_opt names them as LAVIS does and aliases these two).
"""
import contextlib
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from lavis.common.registry import registry
from lavis.models.blip2_models.blip2 import Blip2Base

from lavis_mmict.checkpoints import load_trainable_state_dict, read_checkpoint
from lavis_mmict.errors import ConfigError
from lavis_mmict.models.sequence import (
    IGNORE_INDEX, Segment, demo_segment, fit_demos, llm_generate, llm_loss, llm_target_logprob)

# The token that closes each demonstration (OpenFlamingo's), one token of the LLM tokenizer.
SEPARATOR_TOKEN = "<|endofchunk|>"


# FlanT5 has relative positions (no hard limit); its documented input length: FlanT5 and BLIP-2's
# FlanT5 stage were trained on inputs of at most 512 tokens.
T5_MAX_INPUT_POSITIONS = 512


@dataclass(frozen=True)
class LLMFamily:
    """What differs between decoder-only and encoder-decoder LLMs, as data."""

    encoder_decoder: bool  # T5: the prefix is the encoder input, the target the decoder labels
    answer_suffix: str  # appended to targets: BLIP-2 OPT answers end with "\n" (its stop token)
    target_special_tokens: bool  # T5 targets end with </s> (the tokenizer adds it)
    autocast_dtype: torch.dtype  # LAVIS: fp16 around OPT, bf16 around FlanT5 (fp16 overflows in T5)
    position_limit: str  # the LLM input's length limit: a config attribute, or "t5" (documented constant)

    def max_positions(self, llm_config):
        """(limit, what it is) of the packed LLM input (OPT: prefix + target/new tokens; T5: prefix)."""
        if self.position_limit == "t5":
            return T5_MAX_INPUT_POSITIONS, "FlanT5's input length (T5_MAX_INPUT_POSITIONS)"
        return getattr(llm_config, self.position_limit), f"the LLM's {self.position_limit}"


LLM_FAMILIES = {
    "opt": LLMFamily(encoder_decoder=False, answer_suffix="\n", target_special_tokens=False,
                     autocast_dtype=torch.float16, position_limit="max_position_embeddings"),
    "t5": LLMFamily(encoder_decoder=True, answer_suffix="", target_special_tokens=True,
                    autocast_dtype=torch.bfloat16, position_limit="t5"),
}


def check_choice(value, valid, key):
    """``value`` if it is one of ``valid``, else a ValueError naming ``model.<key>`` and the choices."""
    if value not in valid:
        raise ValueError(f"Unknown model.{key} {value!r}; valid: {list(valid)}")
    return value


@dataclass
class EncodedBatch:
    """What a model's encoders give the LLM, before packing.

    query_visual (B, Nq, D): each query's visual tokens;
    demo_embeds (B, K, L, D), demo_token_mask (B, K, L) bool, demo_mask (B, K) bool: per demo slot,
    and separator (D,): the embedding after each demo; all None when no demonstration reaches the LLM.
    """

    query_visual: torch.Tensor
    demo_embeds: Optional[torch.Tensor] = None
    demo_token_mask: Optional[torch.Tensor] = None
    demo_mask: Optional[torch.Tensor] = None
    separator: Optional[torch.Tensor] = None


def query_clips(samples):
    """samples["image"] as clips (B, F, 3, H, W): a batch of still images is one-frame clips."""
    image = samples["image"]
    return image.unsqueeze(1) if image.dim() == 4 else image


@dataclass
class RealDemos:
    """The M demonstrations of a batch that exist (``demo_mask`` True), sample by sample.

    mask (B, K) bool on the model's device; sample_index, slot_index (M,) long; pairs: the M
    (sample, slot) pairs; texts: their M ``demo_text`` strings.
    """

    samples: dict
    mask: torch.Tensor
    sample_index: torch.Tensor
    slot_index: torch.Tensor
    pairs: List[Tuple[int, int]]
    texts: List[str]

    def pick(self, per_slot):
        """A per-slot nested list ([B][K], e.g. ``demo_media_key``) -> its M values of real demos."""
        return [per_slot[b][k] for b, k in self.pairs]

    def all_clips(self):
        """samples["demo_image"] as (B, K, F, 3, H, W): still images (B, K, 3, H, W) are one-frame clips."""
        demo_image = self.samples["demo_image"]
        return demo_image.unsqueeze(2) if demo_image.dim() == 5 else demo_image

    def clips(self, device, which=None):
        """The real demos' clips (M, F, 3, H, W) on ``device``; ``which``: only these of the M.

        Only the selected clips are copied (absent slots and bank hits never travel).
        """
        which = range(len(self.pairs)) if which is None else which
        demo_image = self.all_clips()
        rows = torch.tensor([self.pairs[i][0] for i in which], dtype=torch.long, device=demo_image.device)
        slots = torch.tensor([self.pairs[i][1] for i in which], dtype=torch.long, device=demo_image.device)
        return demo_image[rows, slots].to(device)

    def scatter(self, real_embeds, real_mask):
        """(M, L, D) embeddings and (M, L) mask of the real demos -> (B, K, L, D) and (B, K, L) bool,
        each in its (sample, slot) place; absent slots stay zero and masked."""
        batch, num_slots = self.mask.shape
        length = real_embeds.shape[1]
        demo_embeds = real_embeds.new_zeros(batch, num_slots, length, real_embeds.shape[-1])
        demo_token_mask = torch.zeros(batch, num_slots, length, dtype=torch.bool, device=self.mask.device)
        demo_embeds[self.sample_index, self.slot_index] = real_embeds
        demo_token_mask[self.sample_index, self.slot_index] = real_mask
        return demo_embeds, demo_token_mask


class Blip2ICLModel(Blip2Base):
    """Base of the registered in-context models: everything after ``encode`` (see module docstring).

    A subclass sets ``DEMO_FORMATS``, calls this ``__init__`` first (the vision encoder is its first
    module, as in LAVIS's BLIP-2), then sets ``separator_id`` and ``answer_end_id``
    (``answer_end_token_id()``) in its own.
    """

    DEMO_FORMATS: Tuple[str, ...] = ()  # model.demo_format values; the first is the default

    def __init__(self, visual_encoder, ln_vision, demo_format, family: LLMFamily, prompt="", max_txt_len=32):
        super().__init__()
        self.demo_format = self.check_demo_format(demo_format)
        self.visual_encoder = visual_encoder
        self.ln_vision = ln_vision
        self.family = family
        self.prompt = prompt
        self.max_txt_len = max_txt_len
        # demonstrations.max_prefix_tokens (set by the task from the datasets' config): None = off
        self.max_prefix_tokens = None

    # ---------------------------------------------------------------- building
    @classmethod
    def registered_name(cls):
        """The name the model is registered under (``mmict_blip2``, ``aim_opt``)."""
        mapping = registry.mapping["model_name_mapping"]
        return next((name for name, model_cls in mapping.items() if model_cls is cls), cls.__name__)

    @classmethod
    def check_demo_format(cls, demo_format):
        return check_choice(demo_format, cls.DEMO_FORMATS, "demo_format")

    @classmethod
    def demo_format_from_config(cls, cfg):
        """``model.demo_format`` of a config, checked; the key's old AIM name is a clear error."""
        if "demo_mode" in cfg:
            raise ConfigError(f"model.demo_mode was renamed to model.demo_format (valid for "
                              f"{cls.registered_name()}: {list(cls.DEMO_FORMATS)}); rename the key in your config")
        return cls.check_demo_format(cfg.get("demo_format", cls.DEMO_FORMATS[0]))

    def load_trainable_checkpoint(self, path):
        """Load a checkpoint written by our runners (trainable parameters only), checked first."""
        checkpoint = read_checkpoint(path)
        return load_trainable_state_dict(self, checkpoint["model"], source=path)

    def answer_end_token_id(self):
        """The token that ends an answer, where generation stops (T5: </s>; OPT: the answer suffix)."""
        if self.family.encoder_decoder:
            return self.llm_tokenizer.eos_token_id
        return self.llm_tokenizer(self.family.answer_suffix, add_special_tokens=False).input_ids[0]

    # ---------------------------------------------------------------- hooks
    def encode(self, samples) -> EncodedBatch:
        """The model's encoders on a batch (see EncodedBatch); called by ``prefix_segments``."""
        raise NotImplementedError

    def encoding_context(self):
        """Context ``encode`` runs in, inside the LLM call's autocast (default: nothing more)."""
        return contextlib.nullcontext()

    def before_llm_call(self):
        """Called first in ``forward`` and ``generate`` (default: nothing)."""

    # ---------------------------------------------------------------- demonstrations
    def real_demos(self, samples) -> Optional[RealDemos]:
        """The batch's demonstrations that exist, or None when none reaches the LLM (format
        ``none``, no ``demo_mask``, or every slot empty)."""
        demo_mask = samples.get("demo_mask")
        if self.demo_format == "none" or demo_mask is None or not bool(demo_mask.any()):
            return None
        demo_mask = demo_mask.to(self.device).bool()
        sample_index, slot_index = demo_mask.nonzero(as_tuple=True)
        pairs = list(zip(sample_index.tolist(), slot_index.tolist()))
        texts = [samples["demo_text"][b][k] for b, k in pairs]
        return RealDemos(samples, demo_mask, sample_index, slot_index, pairs, texts)

    # ---------------------------------------------------------------- LLM inputs
    def embed_tokens(self, ids):
        return self.llm_model.get_input_embeddings()(ids)

    def llm_dtype(self):
        """The dtype the LLM reads its input embeddings in (its embedding table's)."""
        return self.llm_model.get_input_embeddings().weight.dtype

    def separator_token_embedding(self):
        """The LLM's own embedding of the separator token: (D,)."""
        return self.embed_tokens(torch.tensor(self.separator_id, device=self.device))

    def format_prompts(self, samples, prompt=None):
        """The LLM prompt of each query: ``prompt`` with ``{}`` filled by ``text_input``."""
        template = self.prompt if prompt is None or prompt == "" else prompt
        texts = samples.get("text_input")
        if texts is None:
            return [template] * samples["image"].shape[0]
        if isinstance(texts, str):
            texts = [texts]
        if "{}" in template:
            return [template.format(text) for text in texts]
        return [template or text for text in texts]

    def prompt_segment(self, prompts):
        """The prompt, tokenized as LAVIS's BLIP-2 does (OPT: leading </s>; T5: trailing </s>)."""
        tokens = self.llm_tokenizer(
            prompts, padding="longest", truncation=True, max_length=self.max_txt_len, return_tensors="pt"
        ).to(self.device)
        ids = tokens.input_ids
        return Segment(self.embed_tokens(ids), tokens.attention_mask.bool(), token_ids=ids)

    def target_segment(self, answers, prompts=None):
        """The answers followed by the family's answer suffix, as labels (pads ignored).

        Decoder-only (OPT): BLIP-2 tokenizes prompt and answer as one text, ``"<prompt> <answer>\n"``,
        so after a non-empty prompt the answer is tokenized with its leading space (GPT-2 BPE:
        ``" yes"`` is one token, not ``"yes"``), exactly the tokens LAVIS's Blip2OPT trains on.
        """
        if prompts is None or self.family.encoder_decoder:
            prompts = [""] * len(answers)
        texts = [(" " if prompt and not prompt[-1].isspace() and not answer[:1].isspace() else "")
                 + answer + self.family.answer_suffix for answer, prompt in zip(answers, prompts)]
        tokens = self.llm_tokenizer(
            texts,
            add_special_tokens=self.family.target_special_tokens,
            padding="longest",
            truncation=True,
            max_length=self.max_txt_len,
            return_tensors="pt",
        ).to(self.device)
        mask = tokens.attention_mask.bool()
        labels = tokens.input_ids.masked_fill(~mask, IGNORE_INDEX)
        return Segment(self.embed_tokens(tokens.input_ids), mask, labels=labels, token_ids=tokens.input_ids)

    def prefix_segments(self, samples, prompt=None, following=0):
        """[demos with separators] [query visual tokens] [prompt] for every sample, in the LLM's dtype.

        following: positions the LLM reads after the prefix (OPT: the target's (B,) lengths when
        training, the new tokens when generating; 0 for T5's encoder). With
        ``max_prefix_tokens`` the farthest demos (first slots) are dropped to fit; a packed length
        over the LLM's limit is a ConfigError naming K, the lengths and the limit.
        """
        with self.encoding_context():
            encoded = self.encode(samples)
        visual_mask = torch.ones(encoded.query_visual.shape[:2], dtype=torch.bool, device=self.device)
        query = [Segment(encoded.query_visual, visual_mask),
                 self.prompt_segment(self.format_prompts(samples, prompt))]
        query_lengths = sum(segment.mask.sum(dim=1) for segment in query)
        segments, demo_lengths, demo_mask = [], None, None
        if encoded.demo_embeds is not None:
            demo_mask = encoded.demo_mask
            demo_lengths = (encoded.demo_token_mask.sum(dim=2) + 1) * demo_mask  # (B, K), + separator
            if self.max_prefix_tokens is not None:
                demo_mask = fit_demos(demo_lengths, self.max_prefix_tokens - query_lengths) & demo_mask
                demo_lengths = demo_lengths * demo_mask
            segments.append(demo_segment(encoded.demo_embeds, encoded.demo_token_mask, demo_mask, encoded.separator))
        self.check_packed_length(query_lengths, demo_lengths, demo_mask, following)
        segments += query
        dtype = self.llm_dtype()
        for segment in segments:  # one dtype for the packed input (e.g. fp16 LLM, fp32 projection)
            segment.embeds = segment.embeds.to(dtype)
        return segments

    def check_packed_length(self, query_lengths, demo_lengths, demo_mask, following):
        """ConfigError when a sample's packed LLM input exceeds the LLM's positions (OPT would fail
        in a CUDA device assert). query_lengths (B,); demo_lengths, demo_mask (B, K) or None."""
        demos = demo_lengths.sum(dim=1) if demo_lengths is not None else torch.zeros_like(query_lengths)
        following = torch.as_tensor(following, device=query_lengths.device).expand_as(query_lengths)
        total = demos + query_lengths + following
        limit, what = self.family.max_positions(self.llm_model.config)
        if int(total.max()) > limit:
            i = int(total.argmax())
            num = int(demo_mask[i].sum()) if demo_mask is not None else 0
            raise ConfigError(
                f"the packed LLM input of sample {i} has {int(total[i])} positions, over {what} = {limit}: "
                f"K={num} demonstrations ({int(demos[i])} positions with separators), query {int(query_lengths[i])} "
                f"(visual tokens + prompt), {int(following[i])} target/new tokens. Lower demonstrations.num or "
                "model.max_txt_len, or set demonstrations.max_prefix_tokens to drop the farthest demonstrations")

    # ---------------------------------------------------------------- training
    def forward(self, samples):
        """Returns {"loss"}: cross-entropy averaged over the batch's target tokens only."""
        self.before_llm_call()
        # Autocast (CUDA only) around everything, as LAVIS's BLIP-2: the LLM in fp16 (OPT) or bf16 (FlanT5).
        with self.maybe_autocast(self.family.autocast_dtype):
            target = self.target_segment(samples["text_output"], self.format_prompts(samples))
            following = 0 if self.family.encoder_decoder else target.mask.sum(dim=1)
            loss, _ = llm_loss(self.llm_model, self.prefix_segments(samples, following=following), target,
                               self.family.encoder_decoder)
        return {"loss": loss}

    # ---------------------------------------------------------------- inference
    @torch.no_grad()
    def score_answers(self, samples, candidates, prompt=None):
        """(B, C) log-probability of each of the C ``candidates`` (strings, the same for every query)
        as the continuation of each query with its demonstrations, read as training reads targets
        (answer + end suffix: "yes" means exactly "yes"). The prefix is encoded once; one batched
        LLM call per candidate."""
        self.before_llm_call()
        with self.maybe_autocast(self.family.autocast_dtype):
            prompts = self.format_prompts(samples, prompt)
            targets = [self.target_segment([candidate] * len(prompts), prompts) for candidate in candidates]
            longest = max(int(target.mask.sum(dim=1).max()) for target in targets)
            prefix = self.prefix_segments(samples, prompt, following=0 if self.family.encoder_decoder else longest)
            scores = [llm_target_logprob(self.llm_model, prefix, target, self.family.encoder_decoder)
                      for target in targets]
        return torch.stack(scores, dim=1)

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
        """Batched generation with each sample's demonstrations (any K per sample via ``demo_mask``).

        Beam search (``num_beams``) or nucleus sampling (``use_nucleus_sampling``, ``top_p``,
        ``temperature``); ``max_length``/``min_length`` count generated tokens. Returns
        B * num_captions strings (sample-major).
        """
        self.before_llm_call()
        with self.maybe_autocast(self.family.autocast_dtype):
            new_tokens = llm_generate(
                self.llm_model,
                self.prefix_segments(samples, prompt, following=0 if self.family.encoder_decoder else max_length),
                self.family.encoder_decoder,
                max_new_tokens=max_length,
                min_new_tokens=min_length,
                num_beams=num_beams,
                use_nucleus_sampling=use_nucleus_sampling,
                num_return_sequences=num_captions,
                top_p=top_p,
                temperature=temperature,
                repetition_penalty=repetition_penalty,
                length_penalty=length_penalty,
                eos_token_id=self.answer_end_id,
                pad_token_id=self.llm_tokenizer.pad_token_id,
            )
        # The LLM's spare vocabulary rows (OPT: 50272 rows for 50265 tokens) have no token: a
        # random or barely trained model can emit them, and the tokenizer cannot decode them.
        spare = new_tokens >= len(self.llm_tokenizer)
        new_tokens = new_tokens.masked_fill(spare, self.llm_tokenizer.pad_token_id)
        texts = self.llm_tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
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
        use_nucleus_sampling=False,
        **kwargs,
    ):
        """Open-ended answers (one string per query), generated with the query's demonstrations.

        Called by the tasks with ``run.num_beams``, ``run.max_len``, ``run.min_len``, ``run.prompt``.
        """
        if inference_method != "generate":
            raise ValueError(f"{self.registered_name()} answers by generation only, "
                             f"got inference_method={inference_method!r}")
        return self.generate(
            samples,
            use_nucleus_sampling=use_nucleus_sampling,
            num_beams=num_beams,
            max_length=max_len,
            min_length=min_len,
            length_penalty=length_penalty,
            prompt=prompt,
            **{k: v for k, v in kwargs.items() if k in ("top_p", "temperature", "repetition_penalty")},
        )
