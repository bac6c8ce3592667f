"""rlsd: RL with verifiable rewards + self-distillation, and a plugin ecosystem for rewards.

This package's root is the public contract: everything a plugin author imports is exported here
(hook markers, the typed records plugins return, the verdict, the plugin manager, input hygiene,
the leakage detector). It imports neither torch nor transformers, so a verifier's worker process
starts light. The rooms behind it (see docs/architecture.md):

  rewards/   scoring completions with verifiers (runtime, worker pool, cache)
  data/      tasks, suites, prompts
  models/    model specs, loading, the scoring forward, the embedded tiny model
  engines/   rollout engines (HF, vLLM)
  loop/      the training loop: stages of a step, objectives, schedule, update, checkpoints
  cli/       the `rlsd` command line
  algo.py    the algorithm's tensor maths (pure torch functions)
  config.py  the typed run config
"""

from importlib.metadata import PackageNotFoundError, version as _version

from .hookspecs import API_VERSION, RlsdDeprecationWarning, hookimpl, hookspec
from .hygiene import DEFAULT_MAX_CHARS, clean_completion, clean_tail, keep_tail, normalize_text
from .leakage import Leak, leakage, leakage_count
from .records import (CreditInputs, Example, InjectorContext, InjectorRecord, LossInputs, Magnitude,
                      ObjectiveRecord, OptionsError, RecordError, RunInfo, Scheduler,
                      SchedulerRecord, TaskError, TaskSourceRecord, VerifierRecord, check_options)
from .verdict import Category, Verdict
from .plugins import (ApiVersionError, PluginError, PluginManager, UnknownNameError,
                      get_plugin_manager)

try:
    __version__ = _version("rlsd")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "API_VERSION", "ApiVersionError", "Category", "CreditInputs", "DEFAULT_MAX_CHARS", "Example",
    "InjectorContext", "InjectorRecord", "Leak", "LossInputs", "Magnitude", "ObjectiveRecord",
    "OptionsError", "PluginError", "PluginManager", "RecordError", "RlsdDeprecationWarning",
    "RunInfo", "Scheduler", "SchedulerRecord", "TaskError", "TaskSourceRecord",
    "UnknownNameError", "Verdict", "VerifierRecord", "check_options", "clean_completion",
    "clean_tail", "get_plugin_manager", "hookimpl", "hookspec", "keep_tail", "leakage",
    "leakage_count", "normalize_text", "__version__",
]
