"""socfeeds: the declarations and pure logic behind the Prefect flows (no AWS calls here)."""
