"""Synthetic batches in the collater's layout (DESIGN.md), seeded: random frames, short texts."""
import torch

WORDS = ("man woman dog cat car ball red blue green small big running playing eating walking "
         "table kitchen street field water guitar phone tree house child horse bike").split()
QUESTION_WORDS = ("what who where how why").split()


def _question(generator) -> str:
    picks = torch.randint(len(WORDS), (5,), generator=generator).tolist()
    head = QUESTION_WORDS[int(torch.randint(len(QUESTION_WORDS), (1,), generator=generator))]
    return f"{head} is the {WORDS[picks[0]]} {WORDS[picks[1]]} {WORDS[picks[2]]} doing"


def _answer(generator) -> str:
    return WORDS[int(torch.randint(len(WORDS), (1,), generator=generator))]


def make_batch(batch: int, num_demos: int, frames: int, image_size: int, seed: int = 0,
               device="cpu", key_prefix: str = "bench") -> dict:
    """B queries with K demos each (all real); ``demo_media_key`` names every demo clip, so the
    model's demo feature cache (when on) can hold them."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, frames, 3, image_size, image_size, generator=generator)
    demo_image = torch.randn(batch, num_demos, frames, 3, image_size, image_size, generator=generator)
    return {
        "image": image.to(device),
        "text_input": [_question(generator) for _ in range(batch)],
        "text_output": [_answer(generator) for _ in range(batch)],
        "demo_image": demo_image.to(device),
        "demo_text": [[f"Question: {_question(generator)} Short answer: {_answer(generator)}"
                       for _ in range(num_demos)] for _ in range(batch)],
        "demo_mask": torch.ones(batch, num_demos, dtype=torch.bool, device=device),
        "demo_media_key": [[f"{key_prefix}-{seed}-{b}-{k}" for k in range(num_demos)] for b in range(batch)],
    }
