"""Tiny in-context batches for the model tests: random frames, fixed texts, and a different number
of real demonstrations per query (an empty demo text marks an absent slot)."""
import torch

# mmict_batch's shape: B queries, K demo slots each, F frames per clip, SIZE x SIZE pixels
B, K, F, SIZE = 3, 3, 2, 32


def make_batch(questions, demo_texts, answers=None, frames=F, seed=0, size=SIZE, demo_media_keys=None):
    """The collater's keys for ``len(questions)`` queries with ``len(demo_texts[0])`` demo slots each.

    Returns image (B, frames, 3, size, size), text_input, text_output (when ``answers`` is given),
    demo_image (B, K, frames, 3, size, size), demo_text (B lists of K), demo_mask (B, K) bool, True
    where the demo text is not empty, and demo_media_key when given. Images are drawn from
    ``seed``, queries' before demos'.
    """
    generator = torch.Generator().manual_seed(seed)
    batch = {"image": torch.randn(len(questions), frames, 3, size, size, generator=generator),
             "text_input": list(questions)}
    if answers is not None:
        batch["text_output"] = list(answers)
    batch["demo_image"] = torch.randn(len(questions), len(demo_texts[0]), frames, 3, size, size, generator=generator)
    batch["demo_text"] = [list(row) for row in demo_texts]  # fresh lists: tests edit them
    batch["demo_mask"] = torch.tensor([[bool(text) for text in row] for row in demo_texts])
    if demo_media_keys is not None:
        batch["demo_media_key"] = [list(row) for row in demo_media_keys]
    return batch


MMICT_QUESTIONS = ["what color is the shape?", "what is the code word?", "what shape is shown?"]
SHAPE_DEMO = "Question: what shape is shown? Short answer: square"
WORD_DEMO = "Question: what is the code word? Short answer: apple"
SECRET_DEMO = "Question: which word is secret? Short answer: tiger"


def mmict_batch(seed=0):
    """B = 3 queries of F = 2 frames with 2, 1 and 0 real demonstrations, and their answers."""
    demos = [[SHAPE_DEMO, WORD_DEMO, ""], [SECRET_DEMO, "", ""], ["", "", ""]]
    return make_batch(MMICT_QUESTIONS, demos, answers=["red", "tiger", "circle"], seed=seed)


def mmict_generation_batch(seed=0):
    """mmict_batch's queries without answers, with 3, 1 and 0 real demonstrations."""
    color_demo = "Question: what color is the shape? Short answer: red"
    demos = [[SHAPE_DEMO, WORD_DEMO, color_demo], [SECRET_DEMO, "", ""], ["", "", ""]]
    return make_batch(MMICT_QUESTIONS, demos, seed=seed)


def aim_batch(frames=1, seed=1):
    """2 queries (still images unless ``frames`` > 1) with 2 and 1 real demonstrations of K = 3."""
    demos = [["Question: what is it? Short answer: tiger", "a red square", ""],
             ["Question: which word is secret? Short answer: stone", "", ""]]
    return make_batch(["what is the code word?", "what color is the shape?"], demos, answers=["tiger", "red"],
                      frames=frames, seed=seed)
