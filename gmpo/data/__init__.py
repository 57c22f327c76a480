"""Data: sources (hub name or local file), the one prompt encoder, the training prompt stream, built-in tasks.

- :mod:`gmpo.data.sources`: load a dataset by hub name or local path and map its question/answer fields.
- :mod:`gmpo.data.prompts`: templates and :class:`PromptEncoder`, used by every part that renders prompts.
- :mod:`gmpo.data.loader`: :class:`PromptLoader`, the seeded, resumable stream of training prompts.
- :mod:`gmpo.data.arithmetic`: the built-in arithmetic task of the demo recipe.
"""
