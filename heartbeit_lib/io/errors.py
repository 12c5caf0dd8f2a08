"""Typed errors of the ECG readers: every malformed input raises a subclass of :class:`ECGReadError`
(a :class:`ValueError`) whose message is ``"<file>: <reason>"``."""

from __future__ import annotations

from typing import Any

class ECGReadError(ValueError):
    """An ECG file (or array) could not be read. ``.path`` names the file, ``.reason`` says why.

    Subclasses name the kind of problem; ``str(err)`` is ``"<path>: <reason>"``. Picklable (the
    cohort builder sends them between processes).
    """

    def __init__(self, path: Any, reason: str):
        self.path = str(path)
        self.reason = str(reason)
        self.message = f"{self.path}: {self.reason}"
        super().__init__(self.message)

    def __str__(self) -> str:  # OSError subclasses below would otherwise format "[Errno ...]"
        return self.message

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


class MissingFileError(ECGReadError, FileNotFoundError):
    """The file does not exist (also a :class:`FileNotFoundError`)."""


class UnreadableFileError(ECGReadError):
    """The file exists but cannot be read (permissions, a directory, ...)."""


class MissingSignalFileError(MissingFileError):
    """A WFDB header names a signal file (``.dat``/``.mat``) that does not exist."""


class EmptyFileError(ECGReadError):
    """The file is empty, or an XML document without a root element, or holds no samples."""


class UnsupportedFormatError(ECGReadError):
    """Not a format this module reads (unknown suffix, multi-segment WFDB, not a MATLAB file...)."""


class NotXMLError(ECGReadError):
    """The ``.xml`` file is not well-formed XML."""


class UnsafeXMLError(ECGReadError):
    """defusedxml refused the document (entity declarations: XML bomb, external entities)."""


class WrongRootError(ECGReadError):
    """Well-formed XML whose root element is not ``<RestingECG>`` (e.g. GE CardioSoft)."""


class MissingWaveformError(ECGReadError):
    """No waveform of the requested type, no ``<LeadData>``, or no signal array in a ``.mat``."""


class Base64Error(ECGReadError):
    """``WaveFormData`` is missing, not base64, truncated, or has an odd byte count."""


class ChecksumError(ECGReadError):
    """A stored checksum (MUSE ``LeadDataCRC32``, WFDB checksum / first value) does not match."""


class LeadMismatchError(ECGReadError):
    """Lead count or per-lead sample count inconsistent, duplicated lead names."""


class MissingLeadError(ECGReadError):
    """Lead I or II (needed for the derived limb leads) is absent."""


class NonFiniteError(ECGReadError):
    """NaN, inf or WFDB invalid-sample markers in the signal."""


class FlatLineError(ECGReadError):
    """Every lead is flat (peak-to-peak below :data:`FLAT_PTP_UV`)."""


class HeaderSyntaxError(ECGReadError):
    """A WFDB header that cannot be parsed (garbage, binary, missing fields)."""


class HeaderSignalMismatchError(ECGReadError):
    """The signal file does not hold what the header declares (short ``.dat``, wrong ``.mat`` shape)."""


class UnknownSamplingRateError(ECGReadError):
    """Sampling rate missing, not a number, zero, negative or non-finite."""


class UnitsError(ECGReadError):
    """Unknown amplitude units, or a zero / missing / non-finite gain."""


class MetadataError(ECGReadError):
    """A metadata table is missing columns, unparsable, or does not match its signal array."""


class AmplitudeError(ECGReadError):
    """Samples beyond the physiological range after scaling (see ``record.MAX_ABS_UV``): a wrong gain or unit."""


class UnsafePathError(ECGReadError):
    """A header names a signal file outside its own folder (absolute path or ``..``)."""


class FileTooLargeError(ECGReadError):
    """A file or header line beyond the size caps of the readers (see ``record.MAX_*``)."""
