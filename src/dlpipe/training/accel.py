"""The speed options of ``params.accel`` as one object the training loop applies:
autocast (AMP), the channels_last memory format and ``torch.compile``.

All off is the plain float32 loop: autocast disabled, the GradScaler a pass-through.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from dlpipe.config import AccelOptions


@dataclass(frozen=True)
class Accel:
    device_type: str = "cpu"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def from_params(cls, cfg: AccelOptions, device: torch.device) -> "Accel":
        return cls(device.type, cfg.amp, cfg.channels_last, cfg.compile)

    @property
    def dtype(self) -> torch.dtype:
        """bfloat16 where the device has it (same range as float32: no loss scaling), else float16."""
        if self.device_type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16

    def autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Scales float16 losses so small gradients do not flush to zero; disabled otherwise."""
        enabled = self.amp and self.dtype == torch.float16 and self.device_type == "cuda"
        return torch.amp.GradScaler(self.device_type if enabled else "cpu", enabled=enabled)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply the memory format and compile in place: ``Module.compile`` keeps the
        state_dict keys, so checkpoints and weights files do not change shape."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.compile:
            from torch._inductor import config as inductor_config  # loaded only here: about 2 s

            # Inductor honours deterministic mode only through its own flag.
            inductor_config.deterministic = torch.are_deterministic_algorithms_enabled()
            model.compile()
        return model


OFF = Accel()
