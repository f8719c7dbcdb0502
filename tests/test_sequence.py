"""Sequence packing: real positions keep their order, pads vanish, labels stay on targets."""
import torch

from lavis_mmict.models.sequence import IGNORE_INDEX, NO_TOKEN, Segment, demo_segment, pack_segments


def segment(values, mask, labels=None, token_ids=None):
    """Embeddings that carry their own value, so packed positions are easy to read back."""
    embeds = torch.tensor(values, dtype=torch.float).unsqueeze(-1)
    return Segment(embeds, torch.tensor(mask).bool(),
                   None if labels is None else torch.tensor(labels),
                   None if token_ids is None else torch.tensor(token_ids))


def test_right_padding_keeps_order_and_drops_pads():
    visual = segment([[1, 2], [3, 4]], [[1, 1], [1, 1]])
    prompt = segment([[5, 0], [6, 7]], [[1, 0], [1, 1]], token_ids=[[50, 0], [60, 70]])
    target = segment([[8, 9], [0, 0]], [[1, 1], [0, 0]], labels=[[80, 90], [IGNORE_INDEX, IGNORE_INDEX]])
    packed = pack_segments([visual, prompt, target], padding_side="right")
    assert packed.embeds.squeeze(-1).tolist() == [[1, 2, 5, 8, 9], [3, 4, 6, 7, 0]]
    assert packed.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert packed.labels.tolist() == [[IGNORE_INDEX] * 3 + [80, 90], [IGNORE_INDEX] * 5]
    assert packed.token_ids.tolist() == [[NO_TOKEN, NO_TOKEN, 50, NO_TOKEN, NO_TOKEN],
                                         [NO_TOKEN, NO_TOKEN, 60, 70, NO_TOKEN]]


def test_left_padding_ends_every_row_with_a_real_position():
    visual = segment([[1, 2], [3, 4]], [[1, 1], [1, 1]])
    prompt = segment([[0, 5], [6, 7]], [[0, 1], [1, 1]], token_ids=[[0, 50], [60, 70]])
    packed = pack_segments([visual, prompt], padding_side="left")
    assert packed.embeds.squeeze(-1).tolist() == [[0, 1, 2, 5], [3, 4, 6, 7]]
    assert packed.attention_mask.tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]
    assert packed.token_ids[:, -1].tolist() == [50, 70]


def test_demo_segment_masks_absent_demos_and_their_separators():
    # B=1, K=2, L=2, D=1: demo 1 has one real token, demo 2 is absent.
    demo_embeds = torch.tensor([[[[1.0], [2.0]], [[3.0], [4.0]]]])
    token_mask = torch.tensor([[[True, False], [True, True]]])
    demo_mask = torch.tensor([[True, False]])
    seg = demo_segment(demo_embeds, token_mask, demo_mask, torch.tensor([9.0]))
    packed = pack_segments([seg], padding_side="right")
    assert packed.embeds.squeeze(-1).tolist() == [[1.0, 9.0]]


def test_all_empty_rows_pack_to_zero_length():
    seg = segment([[1, 2]], [[0, 0]])
    packed = pack_segments([seg])
    assert packed.embeds.shape == (1, 0, 1)
