"""Where the runner's model runs: device, DDP wrapping and the AMP grad scaler, on CUDA or CPU.

:class:`DeviceSetupMixin` replaces LAVIS 1.0.2's CUDA-only versions of these ``RunnerBase``
properties (see ``docs/lavis-1.0.2-runner-notes.md``). Run config keys: ``device``,
``distributed``, ``find_unused_parameters``, ``amp``.
"""
import logging

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from lavis_mmict.dist import _resolve_device


class DeviceSetupMixin:
    """``device``, ``use_distributed``, ``model`` (moved and DDP-wrapped) and ``scaler`` of a runner."""

    @property
    def device(self):
        if self._device is None:
            self._device = torch.device(_resolve_device(self.config.run_cfg))
        return self._device

    @property
    def use_distributed(self):
        return bool(self.config.run_cfg.get("distributed", False))

    @property
    def find_unused_parameters(self):
        return bool(self.config.run_cfg.get("find_unused_parameters", False))

    @property
    def model(self):
        """The model on ``self.device``, DDP-wrapped when distributed (on CUDA and on CPU)."""
        if self._wrapped_model is None:
            self._model = self._model.to(self.device)
            # DDP refuses a model with nothing to train (e.g. evaluating a frozen model)
            trains = any(param.requires_grad for param in self._model.parameters())
            if self.use_distributed and trains:
                on_cuda = self.device.type == "cuda"
                self._wrapped_model = DDP(
                    self._model,
                    device_ids=[self.config.run_cfg.gpu] if on_cuda else None,
                    find_unused_parameters=self.find_unused_parameters,
                )
            else:
                self._wrapped_model = self._model
        return self._wrapped_model

    @property
    def scaler(self):
        """A GradScaler when ``run.amp`` is on and training runs on CUDA; None otherwise."""
        if self._scaler is None and self.config.run_cfg.get("amp", False):
            if self.cuda_enabled:
                self._scaler = torch.amp.GradScaler("cuda")
            elif not getattr(self, "_warned_amp_on_cpu", False):
                logging.warning("run.amp is ignored on CPU (LAVIS's mixed precision is CUDA-only).")
                self._warned_amp_on_cpu = True
        return self._scaler
