"""Model helpers: tiny offline models of the real architectures for the demo and tests."""
