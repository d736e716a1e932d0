"""reflection-lab: a Jupyter-first lab for reflection-tuning ideas (teacher reflection, IFD / r-IFD
selection, QLoRA in Reflection format, tag-parsed inference, honest evaluation).

Importing the package is cheap on purpose (no torch): each stage lives in its own module.
"""

__version__ = "0.1.0"
