"""medti: Textual Inversion embeddings for synthetic medical training data on a budget.

Stages (one module each): ``preprocess`` -> ``textual_inversion`` -> ``generate`` -> ``classifier``
-> ``evaluate`` -> ``report``. Every stage has a Python API and a ``medti <stage>`` command.
"""

__version__ = "0.1.0"

from medti.errors import MedtiError  # noqa: E402

__all__ = ["MedtiError", "__version__"]
