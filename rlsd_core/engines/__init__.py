"""Rollout engines: sample responses from the current policy (see base.py for the interface).

`from rlsd_core.engines import make_engine, SamplingParams` is all the trainer needs; vLLM is
imported only when the "vllm" engine is asked for.
"""

from rlsd_core.engines.base import (ENGINES, Engine, Generation, SamplingParams, WeightSyncError,
                                    make_engine)

__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "WeightSyncError", "make_engine"]
