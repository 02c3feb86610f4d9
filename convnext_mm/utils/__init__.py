from .runtime import (adapt_to_device, allow_mmengine_checkpoint_globals, load_tool_config,
                      parse_tool_args, run_tool)

__all__ = [
    'adapt_to_device', 'allow_mmengine_checkpoint_globals', 'load_tool_config', 'parse_tool_args',
    'run_tool'
]
