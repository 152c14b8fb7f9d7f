"""Fitting an avatar to photos, one module per concern.

* :mod:`.grow` — Gaussians grown where the photo's person reaches past the avatar (hair).
"""
