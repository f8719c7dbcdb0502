"""What a model's LLM received: the keyword arguments of its forward and of its generate()."""
import contextlib


class LLMSpy:
    """Records what the LLM's forward receives."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.llm_model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        self.calls.append(kwargs)

    def remove(self):
        self.handle.remove()


def llm_inputs(model, batch):
    """The model's loss on ``batch`` and the keyword arguments of its one LLM forward call."""
    spy = LLMSpy(model)
    try:
        loss = model(batch)["loss"]
    finally:
        spy.remove()
    assert len(spy.calls) == 1, "one LLM call per batch"
    return loss, spy.calls[0]


@contextlib.contextmanager
def recording_generate(model):
    """Record the keyword arguments and outputs of the LLM's generate()."""
    calls = []
    original = model.llm_model.generate

    def generate(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append((kwargs, out))
        return out

    model.llm_model.generate = generate
    try:
        yield calls
    finally:
        del model.llm_model.generate
