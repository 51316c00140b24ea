"""AWS operations over one declaration: `ensure_*` make it true, `check_*` only read and report."""
