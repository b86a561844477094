"""Names and letters every part of :mod:`covip.training` shares: the data schema, rewards, judges and configs.

The paper's training samples come in three types; a CapEval / reward question has options A-D, where D is the
"cannot be determined" option a judge picks when the caption does not say (the authors' test set uses
:data:`UNDETERMINED` as D's text).
"""

from __future__ import annotations

__all__ = ["SAMPLE_TYPES", "OPTION_LETTERS", "ANSWER_LETTERS", "CANNOT_DETERMINE", "UNDETERMINED"]

SAMPLE_TYPES = ("caption", "recognition", "verification")
"""Training sample types: personalized captions (r_caps), recognition (r_vis) and yes/no verification."""
OPTION_LETTERS = ("A", "B", "C", "D")
ANSWER_LETTERS = ("A", "B", "C")
"""Letters a fact can be under; D is the 'cannot be determined' option."""
CANNOT_DETERMINE = "D"
UNDETERMINED = "The answer cannot be determined"
"""Option D's text, as in the authors' files."""
