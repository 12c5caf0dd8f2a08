"""Errors of the saliency analysis (shared by :mod:`.maps`, :mod:`.attribution` and :mod:`.faithfulness`)."""


class SaliencyError(ValueError):
    """A saliency input that cannot be used (the message names the parameter and the reason)."""


class UnsupportedMethodError(SaliencyError):
    """The method does not apply to the model (e.g. attention rollout on a CNN)."""
