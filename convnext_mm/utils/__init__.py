from .data_checks import build_train_loop, check_dataset_paths
from .runtime import (adapt_to_device, load_model_config, load_tool_config, parse_tool_args,
                      resolve_resume, run_tool, use_flexible_runner,
                      use_safe_training_hooks)

__all__ = [
    'adapt_to_device', 'build_train_loop', 'check_dataset_paths', 'load_model_config',
    'load_tool_config',
    'parse_tool_args', 'resolve_resume', 'run_tool', 'use_flexible_runner',
    'use_safe_training_hooks'
]
