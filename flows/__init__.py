"""Thin Prefect entry points: resolve the catalog, fan tasks out over feeds, publish the outcome."""
