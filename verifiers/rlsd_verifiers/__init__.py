"""rlsd's built-in verifiers (exact match, math, code), registered through the `rlsd`
entry-point group exactly like third-party plugins."""
