"""Record layouts shared by the pipeline and the trainer; imports neither Beam nor torch.

from schemas import Status, Reason, result_schema, SampleKey
"""

from schemas.manifest import (
    MANIFEST_VERSION,
    STATS_VERSION,
    Manifest,
    ManifestError,
    ShardEntry,
    Stats,
    StatsMismatchError,
)
from schemas.records import (
    INPUT_FIELDS,
    RESULT_FIELDS,
    RESULT_SCHEMA_VERSION,
    Reason,
    Status,
    input_schema,
    result_schema,
)
from schemas.sample import (
    IMAGE_EXTENSIONS,
    KEY_LENGTH,
    TarMember,
    group_samples,
    image_extension,
    key_for_url,
    sample_to_members,
    split_member_name,
    tar_members,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "INPUT_FIELDS",
    "KEY_LENGTH",
    "MANIFEST_VERSION",
    "RESULT_FIELDS",
    "RESULT_SCHEMA_VERSION",
    "STATS_VERSION",
    "Manifest",
    "ManifestError",
    "Reason",
    "ShardEntry",
    "Stats",
    "StatsMismatchError",
    "Status",
    "TarMember",
    "group_samples",
    "image_extension",
    "input_schema",
    "key_for_url",
    "result_schema",
    "sample_to_members",
    "split_member_name",
    "tar_members",
]
