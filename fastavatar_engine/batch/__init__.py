"""Batches of photos -> avatars, resumable: ``fastavatar batch`` (issue 23).

* :mod:`.inputs`: what a batch's INPUT names (a folder, a glob, a .txt/.csv list) -> jobs.
* :mod:`.manifest`: the JSON Lines manifest a run appends to and a re-run resumes from.
* :mod:`.worker`: one warm engine that turns a photo into its outputs.
* :mod:`.local`: the in-process runner (one worker, no Ray).
* :mod:`.ray_runner`: workers as Ray actors, on this machine or a cluster (``pip install -e ".[cluster]"``).
"""
