"""Independent numpy reference implementations, used only as test oracles."""
