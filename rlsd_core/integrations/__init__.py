"""Integrations: rlsd's verifiers and RLSD's token reweighting inside other trainers.

rlsd's own loop is one trainer; most users already train with TRL or verl. This room sits above
every other (it may import `rewards`, `data`, `models`, `algo` and `loop`; nothing imports it)
and holds thin adapters from those frameworks' contracts to rlsd's public API:

    trl.py     reward_function(name, **options): a registered verifier as a TRL reward function
               RLSDTrainer: trl.GRPOTrainer with RLSD's per-token advantages (teacher forward,
               A_hat from rlsd_core.algo, lambda / eps_w from a scheduler plugin)
    verl.py    compute_score / compute_score_batch: verl's custom reward function contract,
               routing each `data_source` to a verifier through a mapping (data, not if/elif)
    scoring.py what both share: the plugin registry (loaded once per process), completion text

`trl` and `verl` are optional extras (`pip install 'rlsd[trl]'`); importing this package does not
import them. See docs/integrations.md.
"""
