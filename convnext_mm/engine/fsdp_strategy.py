"""``ConvNeXtFSDPStrategy``: mmengine's FSDPStrategy fixed for torch 2.14 and the CPU
(docs/scale.md). Imported on demand: mmengine's strategies take seconds to import."""
import torch
import torch.nn as nn
from mmengine._strategy import FSDPStrategy
from mmengine.registry import STRATEGIES


@STRATEGIES.register_module()
class ConvNeXtFSDPStrategy(FSDPStrategy):
    """mmengine's ``FSDPStrategy`` (same arguments), fixed for torch 2.14 and the CPU.

    - Resuming: mmengine 0.10.7 passes ``optim_state_dict_to_load`` its arguments in the order
      of torch < 2.1 (the state dict first), which fails with ``unhashable type: 'dict'``.
    - Without CUDA, FSDP gets the CPU as its device (mmengine passes the local rank as a CUDA
      device id), and whole state dicts are not "offloaded to the CPU": torch 2.14 gathers
      the optimizer states of CPU tensors through a buffer it reuses, and with ``.cpu()`` no
      copy there, every parameter's ``exp_avg`` came back as its ``exp_avg_sq``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if not torch.cuda.is_available():
            for config in (self.state_dict_config, self.optim_state_dict_config):
                if hasattr(config, 'offload_to_cpu'):
                    config.offload_to_cpu = False

    def _wrap_model(self, model: nn.Module):
        if not torch.cuda.is_available():
            wrapper = dict(self.model_wrapper or dict(type='MMFullyShardedDataParallel'))
            wrapper.setdefault('device_id', torch.device('cpu'))
            self.model_wrapper = wrapper
        return super()._wrap_model(model)

    def load_optim_state_dict(self, state_dict: dict) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        self.optim_wrapper.load_state_dict(FSDP.optim_state_dict_to_load(
            self.model, self.optim_wrapper.optimizer, state_dict))


__all__ = ['ConvNeXtFSDPStrategy']
