"""How socfeeds runs: the local stack (emulated AWS, XSIAM stand-in, Prefect) and deployment templates."""
