"""rlsd: RL with verifiable rewards + self-distillation, and a plugin ecosystem for rewards.

The host package: hook specs, typed records, the verdict type, plugin discovery, the verifier
runtime, the algorithm, rollout engines and the training loop.
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .hookspecs import hookimpl, hookspec
from .records import (InjectorContext, InjectorRecord, Magnitude, SchedulerRecord,
                      TaskSourceRecord, VerifierRecord)
from .verdict import Category, Verdict
from .plugins import PluginError, PluginManager, UnknownNameError, get_plugin_manager

try:
    __version__ = _version("rlsd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "Category", "InjectorContext", "InjectorRecord", "Magnitude", "PluginError", "PluginManager",
    "SchedulerRecord", "TaskSourceRecord", "UnknownNameError", "Verdict", "VerifierRecord",
    "get_plugin_manager", "hookimpl", "hookspec", "__version__",
]
