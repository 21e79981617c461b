"""fm2edge: from a vision foundation model to a tiny edge model, with numbers for what was gained and lost.

The lifecycle is the package layout: ``data`` -> ``models`` -> ``features`` -> ``probe`` / ``adapt`` -> ``distill``
-> ``bench`` / ``export`` -> ``report``. ``train`` holds the one training loop every stage shares.
"""

__version__ = "0.1.0"
