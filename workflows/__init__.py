"""Durable workflows. They decide; activities touch the world. No I/O, clocks or randomness here."""
