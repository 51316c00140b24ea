"""The embedded local stack for `make demo` and the tests. Never imported by flows/ or tasks/."""
