"""ECG readers: one record type for GE MUSE XML, WFDB (PhysioNet, PTB-XL, CinC) and numpy arrays.

Every reader returns an :class:`ECGRecord`:

* ``signal``: float32 array ``(leads, samples)`` in **microvolts**,
* ``fs``: sampling rate in Hz,
* ``leads``: canonical upper-case lead names in the fixed order
  ``I, II, III, AVR, AVL, AVF, V1, ..., V6`` (only the leads present),
* ``meta``: dict that always holds ``record_id``, ``patient_id``, ``site``, ``acquisition_time``
  (ISO 8601 string or None), ``source_path``, ``source`` (``"muse"``, ``"wfdb"``, ``"numpy"``) and
  ``flags`` (list of warnings that did not warrant a rejection), plus source-specific fields.

Every malformed input raises a subclass of :class:`ECGReadError` (a :class:`ValueError`) whose
message is ``"<file>: <reason>"``; readers never return a record that failed a check and never
let a bare third-party exception escape.

Checks shared by all readers (:func:`validate_signal`):

* the signal is 2-D with one row per lead name, has at least one sample, names are unique;
* ``fs`` is finite and within :data:`FS_MIN_HZ` - :data:`FS_MAX_HZ` (50 - 10,000 Hz: below 50 Hz a QRS
  complex is not resolved at all, the lowest rate in use is PTB-XL's 100 Hz; above 10 kHz is beyond any
  ECG recorder, the highest in use is PTB's 1 kHz and some research devices' 2-8 kHz). A rate outside
  would also make resampling allocate absurd arrays (0.0001 Hz -> 25e9 samples). WFDB's silent 250 Hz
  default for a missing rate is refused;
* every value is finite (WFDB "invalid sample" markers count as non-finite), checked again after
  every cast (the float32 result too);
* no sample beyond +-:data:`MAX_ABS_UV` (50 mV) after scaling, before the limb leads are derived:
  a body-surface ECG spans a few mV, int16 at the usual 1000 adu/mV saturates at 32.8 mV, so
  anything larger is a wrong gain or unit (-> :class:`AmplitudeError`);
* a count or checksum field that is present but cannot be parsed is an error, never a skipped check;
* size caps against hostile inputs (each a :class:`FileTooLargeError`): MUSE XML files up to
  :data:`MAX_XML_BYTES` (16 MiB; real exports are 0.1-1 MB), WFDB headers up to
  :data:`MAX_HEADER_BYTES` (1 MiB) and header lines up to :data:`MAX_LINE_CHARS` (4,096 characters;
  real lines are under 200). Tokens are parsed without backtracking regular expressions, so time
  grows linearly with the input;
* signal files named in a WFDB header stay in the header's folder (no absolute path, no ``..``:
  :class:`UnsafePathError`);
* leads I and II are present (the limb leads III, aVR, aVL, aVF are derived from them when
  missing: ``III = II - I``, ``aVR = -(I + II)/2``, ``aVL = I - II/2``, ``aVF = II - I/2``);
* not flat: a lead is *flat* when its peak-to-peak range is below :data:`FLAT_PTP_UV` (10 uV, two
  quantisation steps of a 4.88 uV/bit MUSE export and far below any real QRS, which spans
  hundreds of uV). All leads flat -> :class:`FlatLineError`; some leads flat -> their names are
  listed in ``meta["flat_leads"]`` and the record is returned.
"""

from ._wfdb_format import read_wfdb_header
from .arrays import from_numpy, read_numpy_table
from .cinc import cinc_database, load_cinc, load_dx_mapping
from .errors import (AmplitudeError, Base64Error, ChecksumError, ECGReadError, EmptyFileError, FlatLineError,
                     HeaderSignalMismatchError, HeaderSyntaxError, LeadMismatchError, MetadataError,
                     MissingFileError, MissingLeadError, MissingSignalFileError, MissingWaveformError,
                     NonFiniteError, NotXMLError, UnitsError, UnknownSamplingRateError, UnreadableFileError,
                     UnsafeXMLError, UnsupportedFormatError, WrongRootError, UnsafePathError, FileTooLargeError)
from .leads import CANONICAL_LEADS, append_limb_leads, canonical_lead, derive_limb_leads
from .muse import read_muse
from .ptbxl import load_ptbxl, load_scp_statements, parse_scp_codes, ptbxl_superclasses
from .read import read_ecg
from .record import (FLAT_PTP_UV, FS_MAX_HZ, FS_MIN_HZ, MAX_ABS_UV, MAX_HEADER_BYTES, MAX_LINE_CHARS, MAX_SIGNALS,
                     MAX_TOTAL_SAMPLES, MAX_XML_BYTES, ECGRecord, excerpt, validate_signal)
from .wfdb import CINC2020_GAIN_FIXES, read_wfdb

__all__ = [
    "CANONICAL_LEADS",
    "FLAT_PTP_UV",
    "CINC2020_GAIN_FIXES",
    "ECGRecord",
    "ECGReadError",
    "MissingFileError",
    "UnreadableFileError",
    "MissingSignalFileError",
    "EmptyFileError",
    "UnsupportedFormatError",
    "NotXMLError",
    "UnsafeXMLError",
    "WrongRootError",
    "MissingWaveformError",
    "Base64Error",
    "ChecksumError",
    "LeadMismatchError",
    "MissingLeadError",
    "NonFiniteError",
    "FlatLineError",
    "HeaderSyntaxError",
    "HeaderSignalMismatchError",
    "UnknownSamplingRateError",
    "UnitsError",
    "MetadataError",
    "AmplitudeError",
    "UnsafePathError",
    "FileTooLargeError",
    "canonical_lead",
    "derive_limb_leads",
    "append_limb_leads",
    "validate_signal",
    "from_numpy",
    "read_ecg",
    "read_muse",
    "read_wfdb",
    "read_wfdb_header",
    "read_numpy_table",
    "load_ptbxl",
    "parse_scp_codes",
    "load_scp_statements",
    "ptbxl_superclasses",
    "load_cinc",
    "load_dx_mapping",
    "cinc_database",
]

