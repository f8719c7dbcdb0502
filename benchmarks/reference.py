"""A per-turn reference of the MMICT training step, written after the public reference code's
algorithm: every demonstration and every query goes through the ViT and M-Hub on its own (batch
1), and the LLM runs once per sample. It uses the model's own modules and tokenizers, so it
computes the same loss as ``MMICTBlip2.forward`` (the token mean over the batch's targets, not
the reference code's doubly divided loss); the smoke test checks that, so timings compare the
same computation done two ways. Decoder-only (OPT) models, ``mmict`` demo format.
"""
import torch

from lavis_mmict.models.sequence import IGNORE_INDEX


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
            target = model.target_segment([samples["text_output"][b]])
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
