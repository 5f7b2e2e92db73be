"""Composition only: ``wiring`` builds every part from settings, ``worker`` runs the loop,
``cli`` is ``edgectl``."""
