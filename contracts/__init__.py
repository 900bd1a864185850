"""Typed contracts shared by activities, workflows, services and the CLI (pure pydantic, no I/O).

Layers point one way: libraries -> contracts -> manual -> activities / workflows -> CLI. Nothing here
imports activities, workflows or the CLI.
"""
