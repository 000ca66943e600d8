"""The pprof profile message (profile.proto's wire format), defined here field by field.

No generated code: the message types are built at import time from the table below with the
`protobuf` package's descriptor pool, so any installed protobuf runtime (pure Python or upb)
serialises them. Field numbers and types follow pprof's published profile.proto (the wire format
pprof, Grafana Pyroscope and speedscope read); the messages and fields this exporter does not
write are left out, which protobuf readers skip by design.
"""

from __future__ import annotations

try:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
except ImportError as exc:  # analyze names the package to install
    raise ImportError("the protobuf package is not installed", name="protobuf") from exc

_F = descriptor_pb2.FieldDescriptorProto
PACKAGE = "kmemleak_offline.pprof"

# message -> [(field, number, type, repeated)]; a str type names another message here
MESSAGES: dict[str, list[tuple[str, int, int | str, bool]]] = {
    "Profile": [
        ("sample_type", 1, "ValueType", True),
        ("sample", 2, "Sample", True),
        ("mapping", 3, "Mapping", True),
        ("location", 4, "Location", True),
        ("function", 5, "Function", True),
        ("string_table", 6, _F.TYPE_STRING, True),  # [0] must be ""
        ("drop_frames", 7, _F.TYPE_INT64, False),
        ("keep_frames", 8, _F.TYPE_INT64, False),
        ("time_nanos", 9, _F.TYPE_INT64, False),
        ("duration_nanos", 10, _F.TYPE_INT64, False),
        ("period_type", 11, "ValueType", False),
        ("period", 12, _F.TYPE_INT64, False),
        ("comment", 13, _F.TYPE_INT64, True),
        ("default_sample_type", 14, _F.TYPE_INT64, False),
    ],
    "ValueType": [("type", 1, _F.TYPE_INT64, False), ("unit", 2, _F.TYPE_INT64, False)],
    "Sample": [
        ("location_id", 1, _F.TYPE_UINT64, True),  # leaf first
        ("value", 2, _F.TYPE_INT64, True),  # one per sample_type
        ("label", 3, "Label", True),
    ],
    "Label": [
        ("key", 1, _F.TYPE_INT64, False),
        ("str", 2, _F.TYPE_INT64, False),
        ("num", 3, _F.TYPE_INT64, False),
        ("num_unit", 4, _F.TYPE_INT64, False),
    ],
    "Mapping": [
        ("id", 1, _F.TYPE_UINT64, False),
        ("memory_start", 2, _F.TYPE_UINT64, False),
        ("memory_limit", 3, _F.TYPE_UINT64, False),
        ("file_offset", 4, _F.TYPE_UINT64, False),
        ("filename", 5, _F.TYPE_INT64, False),
        ("build_id", 6, _F.TYPE_INT64, False),
        ("has_functions", 7, _F.TYPE_BOOL, False),
        ("has_filenames", 8, _F.TYPE_BOOL, False),
        ("has_line_numbers", 9, _F.TYPE_BOOL, False),
        ("has_inline_frames", 10, _F.TYPE_BOOL, False),
    ],
    "Location": [
        ("id", 1, _F.TYPE_UINT64, False),
        ("mapping_id", 2, _F.TYPE_UINT64, False),
        ("address", 3, _F.TYPE_UINT64, False),
        ("line", 4, "Line", True),
        ("is_folded", 5, _F.TYPE_BOOL, False),
    ],
    "Line": [("function_id", 1, _F.TYPE_UINT64, False), ("line", 2, _F.TYPE_INT64, False)],
    "Function": [
        ("id", 1, _F.TYPE_UINT64, False),
        ("name", 2, _F.TYPE_INT64, False),  # string table indexes, as every string here
        ("system_name", 3, _F.TYPE_INT64, False),
        ("filename", 4, _F.TYPE_INT64, False),
        ("start_line", 5, _F.TYPE_INT64, False),
    ],
}


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The messages above as a proto3 file (repeated scalars packed, as proto3 does)."""
    fd = descriptor_pb2.FileDescriptorProto(name="kmemleak_offline/pprof_profile.proto",
                                            package=PACKAGE, syntax="proto3")
    for mname, fields in MESSAGES.items():
        m = fd.message_type.add(name=mname)
        for name, number, ftype, repeated in fields:
            f = m.field.add(name=name, number=number,
                            label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)
            if isinstance(ftype, str):
                f.type = _F.TYPE_MESSAGE
                f.type_name = f".{PACKAGE}.{ftype}"
            else:
                f.type = ftype
    return fd


def _classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()  # our own pool: no clash with any other profile.proto
    pool.Add(file_descriptor())
    out = {}
    for name in MESSAGES:
        desc = pool.FindMessageTypeByName(f"{PACKAGE}.{name}")
        get = getattr(message_factory, "GetMessageClass", None)
        out[name] = get(desc) if get else message_factory.MessageFactory(pool).GetPrototype(desc)
    return out


_CLASSES = _classes()
Profile = _CLASSES["Profile"]
