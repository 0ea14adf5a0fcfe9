"""Use cases: submit, run (the job chain), sweep, cancel. Each takes its adapters injected."""
