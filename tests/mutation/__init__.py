"""`make mutate`'s plumbing (docs/mutation.md): the summary of a run, and the
sitecustomize that servers started by tests load (tests/conftest.py)."""
