"""Minimal fixes to LAVIS 1.0.2 internals that hard-code CUDA where subclassing cannot reach.

Everything else is handled by subclassing (see ``lavis_mmict.runners``). Applied once, on import of
``lavis_mmict``:

- ``lavis.common.logger.SmoothedValue.synchronize_between_processes`` builds its all-reduce tensor
  with ``device="cuda"``, which fails on CPU/gloo. ``MetricLogger`` creates ``SmoothedValue``
  objects inside ``BaseTask._train_inner_loop``, so there is no class to subclass: the method is
  replaced by :func:`synchronize_between_processes`, which puts the tensor where the process
  group's backend needs it (CUDA for nccl, CPU otherwise). Same result on CUDA.
- LAVIS's ``OPTForCausalLM`` and ``T5ForConditionalGeneration`` (modeling_opt/modeling_t5) read the
  key/value cache from a ``past`` argument of ``prepare_inputs_for_generation``; transformers 4.26
  passes it as ``past_key_values``, so the cache was dropped and every generated token recomputed
  the whole prefix (demos included). :func:`accept_past_key_values` hands it on as ``past``.
- ``lavis.common.config.Config.build_model_config`` looks for ``--options model.model_type=X`` as a
  flat ``"model.model_type"`` keyword, but receives the options nested (``model={"model_type": X}``),
  so it loaded the defaults of the config file's model type and only renamed it (a
  ``pretrain_flant5xl`` config run with ``model.model_type=pretrain_opt2.7b`` kept FlanT5's LLM).
  :func:`model_type_from_options` passes the option on as LAVIS expects.
"""
import functools

import torch
import torch.distributed as dist
from lavis.common import dist_utils
from lavis.common.config import Config
from lavis.common.logger import SmoothedValue


def collective_device():
    """The device a tensor must live on for collectives of the default process group."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize_between_processes(self):
    """Sum ``count`` and ``total`` of a ``SmoothedValue`` over ranks (the deque is not synced)."""
    if not dist_utils.is_dist_avail_and_initialized() or dist.get_world_size() == 1:
        return
    totals = torch.tensor(
        [self.count, self.total], dtype=torch.float64, device=collective_device()
    )
    dist.all_reduce(totals)
    count, total = totals.tolist()
    self.count = int(count)
    self.total = total


def accept_past_key_values(prepare_inputs_for_generation):
    """Wrap a LAVIS ``prepare_inputs_for_generation`` so it finds the cache transformers passes."""
    if getattr(prepare_inputs_for_generation, "accepts_past_key_values", False):
        return prepare_inputs_for_generation

    @functools.wraps(prepare_inputs_for_generation)
    def wrapped(self, *args, past_key_values=None, **kwargs):
        if kwargs.get("past") is None:
            kwargs["past"] = past_key_values
        return prepare_inputs_for_generation(self, *args, **kwargs)

    wrapped.accepts_past_key_values = True
    return wrapped


def model_type_from_options(build_model_config):
    """Wrap LAVIS's ``Config.build_model_config(config, **user_options)`` so that a
    ``model.model_type`` given in the options selects that type's default config."""
    if getattr(build_model_config, "reads_nested_model_type", False):
        return build_model_config

    @functools.wraps(build_model_config)
    def wrapped(config, **kwargs):
        model = kwargs.get("model", None)
        model_type = model.get("model_type", None) if hasattr(model, "get") else None
        if model_type and not kwargs.get("model.model_type"):
            kwargs["model.model_type"] = model_type
        return build_model_config(config, **kwargs)

    wrapped.reads_nested_model_type = True
    return wrapped


def apply():
    """Install the fixes (idempotent)."""
    SmoothedValue.synchronize_between_processes = synchronize_between_processes
    Config.build_model_config = staticmethod(model_type_from_options(Config.build_model_config))
    from lavis.models.blip2_models.modeling_opt import OPTForCausalLM
    from lavis.models.blip2_models.modeling_t5 import T5ForConditionalGeneration

    for llm_class in (OPTForCausalLM, T5ForConditionalGeneration):
        llm_class.prepare_inputs_for_generation = accept_past_key_values(llm_class.prepare_inputs_for_generation)


apply()
