"""A per-turn reference of the MMICT training step, written after the public reference code's
algorithm: every demonstration and every query goes through the ViT and M-Hub on its own (batch
1), and the LLM runs once per sample. It uses the model's own modules and tokenizers, so it
computes the same loss as ``MMICTBlip2.forward`` (the token mean over the batch's targets, not
the reference code's doubly divided loss); the smoke test checks that, so timings compare the
same computation done two ways. Decoder-only (OPT) models, ``mmict`` demo format.

``repeated_prefix_generate`` is the generation path before the pre-fill (issue 15): every beam
re-reads the whole packed prefix; the tests check the current path generates the same tokens, and
table 5 times the two side by side.
"""
import contextlib

import torch

from lavis_mmict.models.sequence import IGNORE_INDEX, NO_TOKEN, llm_generate, pack_segments


def _one_item(model, frames, text):
    """ViT + M-Hub for one clip (batch 1): (query outputs (Nq, H), text outputs (L, H))."""
    features = model.encode_frames(frames.unsqueeze(0))
    visible = torch.ones(1, dtype=torch.bool, device=frames.device)
    queries, text_out, text_mask = model.run_mhub(features, [text], visible)
    return queries[0], text_out[0][text_mask[0]]


def per_turn_loss(model, samples):
    """Loss of ``samples`` computed turn by turn; equals ``model(samples)["loss"]``."""
    if model.family.encoder_decoder or model.demo_format != "mmict":
        raise ValueError("the per-turn reference covers decoder-only LLMs with demo_format mmict")
    separator = model.separator_embedding()
    prompts = model.format_prompts(samples)
    demo_mask = samples["demo_mask"]
    weighted_sum, num_targets = 0.0, 0
    with model.maybe_autocast(model.family.autocast_dtype):
        for b in range(len(prompts)):
            pieces = []
            for k in range(demo_mask.shape[1]):
                if not bool(demo_mask[b, k]):
                    continue
                _, demo_text = _one_item(model, samples["demo_image"][b, k], samples["demo_text"][b][k])
                pieces += [model.llm_proj(demo_text), separator.unsqueeze(0)]
            query, _ = _one_item(model, samples["image"][b], samples["text_input"][b])
            prompt = model.prompt_segment([prompts[b]])
            target = model.target_segment([samples["text_output"][b]], [prompts[b]])
            dtype = prompt.embeds.dtype
            pieces += [model.llm_proj(query), prompt.embeds[0], target.embeds[0]]
            embeds = torch.cat([piece.to(dtype) for piece in pieces]).unsqueeze(0)
            labels = torch.full(embeds.shape[:2], IGNORE_INDEX, dtype=torch.long, device=embeds.device)
            labels[0, -target.labels.shape[1]:] = target.labels[0]
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            loss = model.llm_model(inputs_embeds=embeds, attention_mask=mask, labels=labels, return_dict=True).loss
            count = int((target.labels[0] != IGNORE_INDEX).sum())
            weighted_sum = weighted_sum + loss * count
            num_targets += count
    return weighted_sum / num_targets


def repeated_prefix_generate(llm, prefix, encoder_decoder, max_new_tokens, min_new_tokens=1, num_beams=1,
                             use_nucleus_sampling=False, num_return_sequences=1, **generation):
    """``llm_generate`` as it was before the pre-fill: a decoder-only LLM gets the packed prefix
    repeated per beam as ``query_embeds`` and its first forward pass computes vocabulary logits at
    every prefix position. Encoder-decoder LLMs take the unchanged path. Same signature and result."""
    if encoder_decoder:
        return llm_generate(llm, prefix, True, max_new_tokens, min_new_tokens, num_beams, use_nucleus_sampling,
                            num_return_sequences, **generation)
    packed = pack_segments(prefix, padding_side="left")
    last_ids = packed.token_ids[:, -1:]
    if not bool((last_ids != NO_TOKEN).all()):
        raise ValueError("a decoder-only prefix must end with a token segment (the prompt) to generate from")
    expand = num_return_sequences if use_nucleus_sampling else max(num_beams, 1)
    outputs = llm.generate(input_ids=last_ids,
                           query_embeds=packed.embeds[:, :-1].repeat_interleave(expand, dim=0),
                           attention_mask=packed.attention_mask,
                           max_length=max_new_tokens + 1, min_length=min_new_tokens + 1,
                           do_sample=use_nucleus_sampling, num_beams=1 if use_nucleus_sampling else num_beams,
                           num_return_sequences=num_return_sequences, **generation)
    return outputs[:, 1:]


@contextlib.contextmanager
def repeated_prefix_generation():
    """Within the block, models generate through ``repeated_prefix_generate`` (the old path)."""
    from lavis_mmict.models import base

    current = base.llm_generate
    base.llm_generate = repeated_prefix_generate
    try:
        yield
    finally:
        base.llm_generate = current
