"""rlsd's built-in plugins that are not verifiers: magnitude schedulers and privileged-context injectors."""
