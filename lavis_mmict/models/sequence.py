"""Pack per-sample pieces (demos, separators, visual tokens, prompt, target) into padded LLM inputs.

One path serves every model (MMICT, AIM) and both LLM families (OPT's decoder input, T5's encoder
input). Each piece is a ``Segment`` covering the whole batch with its own padding; packing keeps
each sample's real positions in order, drops the pads and pads the result once, without a Python
loop over samples. ``llm_loss`` and ``llm_generate`` hand packed pieces to either LLM family.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch

IGNORE_INDEX = -100  # label value the LLM loss skips
NO_TOKEN = -1  # token id of a position that holds features, not a vocabulary token


@dataclass
class Segment:
    """A piece of every sample's sequence.

    embeds: (B, L, D); mask: (B, L) bool, True = real position;
    labels: (B, L) long or None (None = not a target); token_ids: (B, L) long or None (None = features).
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    labels: Optional[torch.Tensor] = None
    token_ids: Optional[torch.Tensor] = None


@dataclass
class PackedSequence:
    """embeds (B, T, D), attention_mask (B, T) long, labels (B, T), token_ids (B, T); pads are zero."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    token_ids: torch.Tensor


def demo_segment(demo_embeds, demo_token_mask, demo_mask, separator_embed):
    """Lay K demos out one after another, each followed by the separator.

    demo_embeds: (B, K, L, D); demo_token_mask: (B, K, L) bool; demo_mask: (B, K) bool (absent demos
    contribute nothing, not even their separator); separator_embed: (D,).
    Returns a Segment of length K * (L + 1).
    """
    batch, num_demos, length, dim = demo_embeds.shape
    separator = separator_embed.to(demo_embeds.dtype).expand(batch, num_demos, 1, dim)
    embeds = torch.cat([demo_embeds, separator], dim=2).reshape(batch, num_demos * (length + 1), dim)
    token_mask = demo_token_mask & demo_mask.unsqueeze(-1)
    mask = torch.cat([token_mask, demo_mask.unsqueeze(-1)], dim=2).reshape(batch, -1)
    return Segment(embeds, mask)


def fit_demos(demo_lengths, budget):
    """Which demos to keep so that each sample's demos fit its budget, nearest to the query first.

    demo_lengths (B, K) long: positions of each demo (0 for absent ones), slot K-1 next to the
    query; budget (B,): positions left for demos. Returns (B, K) bool: a demo is kept when it and
    every demo after it fit (the farthest, first slots, are dropped), without a loop over samples.
    """
    from_query = demo_lengths.flip(1).cumsum(dim=1).flip(1)  # positions of this demo and those after it
    return from_query <= budget.unsqueeze(1)


def pack_segments(segments: List[Segment], padding_side: str = "right") -> PackedSequence:
    """Concatenate segments per sample, squeeze out pads, pad to the longest sample.

    ``padding_side="left"`` right-aligns every sample so its last position is real (what
    decoder-only generation continues from); ``"right"`` left-aligns (encoder inputs, training).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    embeds = torch.cat([s.embeds for s in segments], dim=1)
    mask = torch.cat([s.mask.bool() for s in segments], dim=1)
    batch, total = mask.shape

    def column(segment, values, fill):
        if values is not None:
            return values.long()
        return torch.full(segment.mask.shape, fill, dtype=torch.long, device=mask.device)

    labels = torch.cat([column(s, s.labels, IGNORE_INDEX) for s in segments], dim=1)
    token_ids = torch.cat([column(s, s.token_ids, NO_TOKEN) for s in segments], dim=1)

    # A stable sort on the mask moves real positions to one side, keeping their order.
    if padding_side == "right":
        order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    else:
        order = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
    length = int(mask.sum(dim=1).max().item()) if total else 0
    order = order[:, :length] if padding_side == "right" else order[:, total - length:]

    packed_mask = torch.gather(mask, 1, order)
    packed_embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand(-1, -1, embeds.shape[-1]))
    packed_embeds = packed_embeds * packed_mask.unsqueeze(-1).to(packed_embeds.dtype)
    packed_labels = torch.gather(labels, 1, order).masked_fill(~packed_mask, IGNORE_INDEX)
    packed_ids = torch.gather(token_ids, 1, order).masked_fill(~packed_mask, NO_TOKEN)
    return PackedSequence(packed_embeds, packed_mask.long(), packed_labels, packed_ids)


# ---------------------------------------------------------------------- where packing meets the LLM
# Decoder-only LLMs (OPT) read [prefix | target] as one sequence, the loss on the target positions;
# encoder-decoder LLMs (T5) read the prefix as encoder input and the target as decoder labels.


def llm_loss(llm, prefix: List[Segment], target: Segment, encoder_decoder: bool):
    """Cross-entropy averaged over the batch's target tokens (``target.labels`` != IGNORE_INDEX).

    prefix: segments the LLM conditions on; target: a Segment with ``labels`` (B, Lt).
    Returns (loss, inputs) where inputs are the keyword arguments the LLM received.
    """
    inputs = _llm_target_inputs(prefix, target, encoder_decoder)
    return llm(**inputs, return_dict=True).loss, inputs


def llm_target_logprob(llm, prefix: List[Segment], target: Segment, encoder_decoder: bool) -> torch.Tensor:
    """(B,) log-probability of each sample's target tokens after its prefix: the sum over the
    target's labelled tokens of log p(token | everything before it), in float32."""
    inputs = _llm_target_inputs(prefix, target, encoder_decoder)
    labels = inputs["labels"] if encoder_decoder else inputs.pop("labels")  # T5 builds its decoder input from them
    logits = llm(**inputs, return_dict=True).logits.float()
    if not encoder_decoder:  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    labelled = labels != IGNORE_INDEX
    token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_logprobs * labelled).sum(dim=1)


def _llm_target_inputs(prefix: List[Segment], target: Segment, encoder_decoder: bool) -> dict:
    """The LLM's keyword arguments for reading ``target`` after ``prefix``, ``labels`` included."""
    if encoder_decoder:
        packed = pack_segments(prefix, padding_side="right")
        labels = target.labels.masked_fill(~target.mask.bool(), IGNORE_INDEX)
        inputs = dict(inputs_embeds=packed.embeds, attention_mask=packed.attention_mask,
                      labels=labels, decoder_attention_mask=target.mask.long())
    else:
        packed = pack_segments(list(prefix) + [target], padding_side="right")
        inputs = dict(inputs_embeds=packed.embeds, attention_mask=packed.attention_mask, labels=packed.labels)
    return inputs


def llm_generate(llm, prefix: List[Segment], encoder_decoder: bool, max_new_tokens: int, min_new_tokens: int = 1,
                 num_beams: int = 1, use_nucleus_sampling: bool = False, num_return_sequences: int = 1,
                 **generation):
    """Generate a continuation of each sample's packed prefix, batched over samples.

    Returns (B * num_return_sequences, T) token ids of the generated tokens only (T <= max_new_tokens;
    rows may end in pad). ``generation`` passes on to Hugging Face ``generate`` (top_p, temperature,
    repetition_penalty, length_penalty, eos_token_id, pad_token_id).
    """
    common = dict(do_sample=use_nucleus_sampling, num_beams=1 if use_nucleus_sampling else num_beams,
                  num_return_sequences=num_return_sequences, **generation)
    if encoder_decoder:
        packed = pack_segments(prefix, padding_side="right")
        # The decoder starts from its start token, which counts towards Hugging Face's lengths.
        outputs = llm.generate(inputs_embeds=packed.embeds, attention_mask=packed.attention_mask,
                               max_new_tokens=max_new_tokens, min_length=min_new_tokens + 1, **common)
        return outputs[:, 1:]
    # With left padding every sample's last position is a token (the prompt's end): Hugging Face
    # generates from it as the single input id. The positions before it are pre-filled once per
    # sample into a key/value cache (no vocabulary logits), which is then repeated per beam /
    # returned sequence; the first decoding step reads the last token against that cache.
    packed = pack_segments(prefix, padding_side="left")
    last_ids = packed.token_ids[:, -1:]
    if not bool((last_ids != NO_TOKEN).all()):
        raise ValueError("a decoder-only prefix must end with a token segment (the prompt) to generate from")
    expand = num_return_sequences if use_nucleus_sampling else max(num_beams, 1)
    past = prefill_cache(llm, packed.embeds[:, :-1], packed.attention_mask[:, :-1], expand)
    outputs = llm.generate(input_ids=last_ids, past_key_values=past, attention_mask=packed.attention_mask,
                           max_length=max_new_tokens + 1, min_length=min_new_tokens + 1, **common)
    return outputs[:, 1:]


def prefill_cache(llm, embeds, attention_mask, expand: int):
    """The decoder-only LLM's key/value cache over ``embeds`` (B, T, D) with ``attention_mask``
    (B, T): one forward pass per sample through the decoder stack only (no vocabulary logits),
    each layer's keys and values then repeated ``expand`` times per sample (B * expand rows, the
    order Hugging Face expands beams in). None when T == 0 (nothing to pre-fill).
    """
    if embeds.shape[1] == 0:
        return None
    out = llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=True, return_dict=True)
    return tuple(tuple(state.repeat_interleave(expand, dim=0) for state in layer) for layer in out.past_key_values)
