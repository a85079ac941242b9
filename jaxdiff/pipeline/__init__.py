"""Real-frame pipelines and batch running: the room for the pipelines on top of the task shell.

Noise models, PSF estimation, registration, outputs and distributed runs will live here; the
layer may import :mod:`jaxdiff.tasks`, :mod:`jaxdiff.image` and :mod:`jaxdiff.core`.  Empty for now.
"""
