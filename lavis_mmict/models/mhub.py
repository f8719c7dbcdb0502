"""Multi-Modal Hub: the BLIP-2 Q-Former run with text, as MMICT uses it.

N learned query tokens and the text tokens share bidirectional self-attention; only the query
positions cross-attend to the frozen visual features. One pass returns both outputs:
- query positions: textual-guided visual features (what the query sample gives the LLM);
- text positions: visual-guided textual features (what each demonstration gives the LLM).
"""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn


@dataclass
class MHubOutput:
    """query_features (M, N, H); text_features (M, L, H) or None; text_mask (M, L) bool or None."""

    query_features: torch.Tensor
    text_features: Optional[torch.Tensor]
    text_mask: Optional[torch.Tensor]


class MultiModalHub(nn.Module):
    """Wraps a LAVIS ``BertLMHeadModel`` Q-Former and its query tokens (1, N, H)."""

    def __init__(self, Qformer, query_tokens):
        super().__init__()
        self.Qformer = Qformer  # LAVIS's attribute names, so BLIP-2 checkpoints map one-to-one
        self.query_tokens = query_tokens

    @property
    def num_query_token(self):
        return self.query_tokens.shape[1]

    def forward(self, visual_memory, visual_mask, text_ids=None, text_mask=None) -> MHubOutput:
        """One batched pass over M items.

        visual_memory: (M, S, Dv) frozen visual features (S = frames x patches);
        visual_mask: (M, S); text_ids, text_mask: (M, L) Q-Former token ids and mask, or None for
        a vision-only pass (plain BLIP-2 query features).
        """
        num_items = visual_memory.shape[0]
        queries = self.query_tokens.expand(num_items, -1, -1)
        if text_ids is None:
            hidden = self.Qformer.bert(
                query_embeds=queries,
                encoder_hidden_states=visual_memory,
                encoder_attention_mask=visual_mask,
                return_dict=True,
            ).last_hidden_state
            return MHubOutput(hidden, None, None)
        query_mask = torch.ones(queries.shape[:2], dtype=text_mask.dtype, device=text_mask.device)
        hidden = self.Qformer.bert(
            text_ids,
            attention_mask=torch.cat([query_mask, text_mask], dim=1),
            query_embeds=queries,
            encoder_hidden_states=visual_memory,
            encoder_attention_mask=visual_mask,
            return_dict=True,
        ).last_hidden_state
        n = self.num_query_token
        return MHubOutput(hidden[:, :n], hidden[:, n:], text_mask.bool())
