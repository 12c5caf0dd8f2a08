"""Cohort stores, fine-tuning tasks and patient-disjoint splits.

A *cohort store* is the output folder of ``notebooks/01_preprocess.ipynb``
(``outputs/01_preprocess/<run_id>/``)::

    store/shard-00000.npy ...      float16 (n_shard, 8, 2500) microvolts, leads I, II, V1-V6, 500 Hz
    store/parts/shard-00000.*.parquet  per-shard manifest / rejects parts (what makes a build resumable)
    store/build_spec.json          fingerprint of inputs + parameters (a resumed build must match it)
    manifest.parquet               one row per stored ECG, in store order (see :class:`CohortStore`)
    rejects.parquet, rejects.csv   one row per input that could not be stored, with the reason
    store.json                     task, counts, shapes, parameters
    .build.lock                    lock held while a build runs (a second build of the folder is refused)

Every input is accounted for: ``n_inputs == len(manifest) + len(rejects)`` (asserted by
:func:`build_store`). Raw patient ids are never written anywhere: the manifest holds
``patient_hash = sha256(salt + "\\0" + patient_id)``. The salt is kept **outside** the run folder
(a per-user file, :func:`default_salt_path`: ``$HEARTBEIT_SALT_FILE``, else
``$XDG_DATA_HOME/heartbeit/salt``, else ``~/.local/share/heartbeit/salt``; ``store.json`` records
its path, never its content). Keep it private: whoever holds the salt can re-identify the
patients by hashing a list of candidate ids.

**Why float16 microvolts.** The filtered signals of real ECGs stay within about +-10 mV
(+-10,000 uV), where float16's spacing is at most 8 uV (2 uV below 4 mV, 0.5 uV below 1 mV),
below the 4.88 uV resolution of a MUSE export. float16's largest finite value is 65,504:
a filtered ECG beyond +-65.5 mV is not physiological and means a wrong gain or unit, so such a
record is **rejected** (:class:`AmplitudeRangeError`) rather than clipped, which would hide
the error.

Tasks live in ``parameters/tasks/<name>.yaml`` (:class:`TaskConfig`, :func:`load_task`);
splits are computed once, when the store is built, and saved in the manifest
(``split``, ``train_rank``), so every model and every run reads the same patients.

Modules: :mod:`.tasks` (task files, label rules), :mod:`.ids` (salt, patient hashes),
:mod:`.build` (the resumable store builder), :mod:`.splits`, :mod:`.store` (:class:`CohortStore`),
:mod:`.sources` (PTB-XL / MUSE / WFDB / demo / in-memory inputs), :mod:`.synthetic` (the demo's
synthetic ECGs). Table 1 and the QC figure are in :mod:`heartbeit_lib.report.qc`; the notebook's
config and orchestration in :mod:`heartbeit_lib.pipeline.preprocess`.
"""

from .build import FLOAT16_MAX, INPUT_COLUMNS, REJECTABLE, ShardSpec, build_shard, build_store, output_leads
from .build import (BuildPlan, build_shard_range, build_shards_in_order, merge_store, plan_build,  # array builds
                    shard_ranges)
from .errors import (AmplitudeRangeError, CohortError, LabelError, NonFiniteOutputError, RecordError, SplitError,
                     StoreError, StoredShapeError, TaskError, WorkerDiedError)
from .ids import SaltFileError, clean_id, default_salt_path, hash_patient, read_or_create_salt, salt_path
from .sources import (ArrayReader, ArrayRecord, Source, build_pretraining_mix, build_store_from_arrays, demo_source,
                      muse_source, ptbxl_source, wfdb_source)
from .splits import SPLITS, assign_splits, check_disjoint, fraction_mask, fraction_size, train_ranks
from .store import LABEL_PREFIX, N_LEADS, N_SAMPLES, REJECT_COLUMNS, STORE_FORMAT, STORE_FS, STORE_VERSION, CohortStore
from .benchmark import BENCHMARK_TASKS, benchmark_labels
from .tasks import (DEFAULT_FRACTIONS, LABEL_RULES, SPLIT_METHODS, TASKS_DIR, TaskConfig, load_task, ptbxl_labels,
                    task_names, threshold_labels)
