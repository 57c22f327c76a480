"""Run directories: the one reader of their files (:mod:`gmpo.runs.files`) and checkpoints
(:mod:`gmpo.runs.checkpoint`). A run directory is the contract between training and everything that reads it
(the dashboard, ``gmpo compare``, ``gmpo tune``, the registry)."""
