"""What the ``python -m pvt_d2.<command>`` entry points share."""
from __future__ import annotations

__all__ = ["help_description"]


def help_description(doc: str) -> str:
    """The ``--help`` text for a command: its module docstring's first paragraph as one line, without the reST
    literal marks (the docstring's first line alone cut the usage line in two)."""
    first = doc.strip().split("\n\n")[0]
    return " ".join(first.split()).replace("``", "")
