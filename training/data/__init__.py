"""covip.training.data: the sample schema, loaders for the authors' formats, and the synthetic generator.

* :mod:`.schema`: :class:`MCQA` and :class:`Sample` (validated), JSONL read/write (atomic);
* :mod:`.loaders`: the authors' training JSON, CapEval test file and test-set JSONL, read and written;
* :mod:`.synth`: :func:`synthesize`, an offline generator of a procedurally drawn world of personal
  concepts (:mod:`.world` facts and dialogues, :mod:`.render` drawings);
* :mod:`.cli`: the ``covip data`` commands (``register(group)``).

Importing this package needs numpy and Pillow only; torch loads when ``similarity='clip'`` is used.
"""

from covip.training.data.loaders import (
    AUTHOR_METHOD_TO_TYPE,
    CapEvalEntry,
    capeval_entry_from_sample,
    load_capeval,
    load_testset_jsonl,
    load_training_json,
    sample_to_testset_record,
    sample_to_training_record,
    write_capeval,
    write_testset_jsonl,
    write_training_json,
)
from covip.training.data.schema import (
    MCQA,
    SAMPLE_TYPES,
    UNDETERMINED,
    Sample,
    read_jsonl,
    resolve_images,
    write_jsonl,
)
from covip.training.data.synth import SynthConfig, SynthReport, concept_similarity, synthesize

__all__ = [
    "MCQA",
    "Sample",
    "SAMPLE_TYPES",
    "UNDETERMINED",
    "read_jsonl",
    "write_jsonl",
    "resolve_images",
    "AUTHOR_METHOD_TO_TYPE",
    "CapEvalEntry",
    "load_training_json",
    "load_capeval",
    "load_testset_jsonl",
    "sample_to_training_record",
    "sample_to_testset_record",
    "capeval_entry_from_sample",
    "write_training_json",
    "write_capeval",
    "write_testset_jsonl",
    "SynthConfig",
    "SynthReport",
    "synthesize",
    "concept_similarity",
]
