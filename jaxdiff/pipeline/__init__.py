"""Real-frame pipelines and batch running (noise models, PSF estimation, registration, outputs,
distributed runs): the room for the pipelines that sit on the task shell.  Empty for now.
"""
