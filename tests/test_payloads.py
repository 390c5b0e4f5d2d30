"""Payload decoding: each format, the limits, and a clear reason for everything refused."""

from __future__ import annotations

import math

import pytest

from edgeflow.connectors.payloads import Decoder, Limits, PayloadError, Schema, check_schema

NOW = 1_790_000_000 * 10**9  # receive time, ns


def dec(
    fmt: str = "json",
    key: str = "topic[1]",
    time: str = "ts",
    fields: tuple[str, ...] = ("temp",),
    **kw: object,
) -> Decoder:
    schema = Schema(
        key,
        time,
        fields,
        kw.pop("types", {}),
        kw.pop("defaults", {}),
        kw.pop("time_unit", "auto"),
        kw.pop("csv_columns", ()),
    )  # type: ignore[arg-type]
    return Decoder(fmt, schema, Limits(**kw))  # type: ignore[arg-type]


def test_json_object_and_array_with_key_from_topic_or_payload() -> None:
    assert dec().decode(b'{"ts": 1790000000500, "temp": 21.5}', "plant/press-3/t", NOW) == [
        ("press-3", NOW + 500_000_000, [21.5])
    ]
    rows = dec(key="id").decode(
        b'[{"id": "a", "ts": "2026-09-21T14:13:20Z", "temp": 1}, {"id": 7, "ts": 1790000000, "temp": 2}]',
        "x",
        NOW,
    )
    assert rows == [("a", 1_790_000_000 * 10**9, [1.0]), ("7", 1_790_000_000 * 10**9, [2.0])]


def test_time_units_received_time_and_defaults() -> None:
    d = dec(
        time="ts",
        time_unit="ms",
        fields=("temp", "hum"),
        defaults={"hum": math.nan},
        types={"temp": "int"},
    )
    ((_, t, vals),) = d.decode(b'{"ts": 1790000000001, "temp": 20}', "p/k", NOW)
    assert t == NOW + 1_000_000 and vals[0] == 20.0 and math.isnan(vals[1])
    assert dec(time="received").decode(b'{"temp": 3}', "p/k", NOW)[0][1] == NOW


def test_senml_resolves_base_values_and_groups_fields_per_device_and_time() -> None:
    # RFC 8428 section 5.1.2-style pack: base name and time, two measurements at two times
    pack = b"""[{"bn":"urn:dev:ow:10e2073a01080063:","bt":1.790000000e9,"bu":"Cel","n":"temp","v":23.1},
                {"n":"hum","v":40.5},
                {"n":"temp","t":10,"v":23.4},
                {"n":"door","vb":true}]"""
    d = dec("senml", key="topic[1]", fields=("temp", "hum"), defaults={"hum": -1.0})
    rows = d.decode(pack, "senml/dev-9", NOW)
    assert rows == [("dev-9", NOW, [23.1, 40.5]), ("dev-9", NOW + 10 * 10**9, [23.4, -1.0])]
    by_name = dec("senml", key="senml-name", fields=("temp",)).decode(pack, "senml/x", NOW)
    assert by_name[0][0] == "urn:dev:ow:10e2073a01080063"
    rel = dec("senml", fields=("temp",)).decode(
        b'[{"bn":"d1:","n":"temp","v":5,"t":-2}]', "s/d1", NOW
    )
    assert rel == [("d1", NOW - 2 * 10**9, [5.0])], "times below 2**28 are relative to now"


def test_csv_and_bare_number() -> None:
    d = dec("csv", key="dev", csv_columns=("dev", "ts", "temp"))
    assert d.decode(b"m1,1790000000,19.25\n", "t", NOW) == [("m1", NOW, [19.25])]
    with pytest.raises(PayloadError, match="'temp' is missing and has no default"):
        d.decode(b"m1,1790000000,", "t", NOW)
    with pytest.raises(PayloadError, match="expected 3 columns"):
        d.decode(b"m1,1790000000", "t", NOW)
    assert dec("number", time="received").decode(b" 42.5 ", "sensors/boiler/temp", NOW) == [
        ("boiler", NOW, [42.5])
    ]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"\xff\xfe not utf8", "not valid JSON"),
        (b'{"ts": 1790000000, "temp": 1', "not valid JSON"),
        (b"[" * 50 + b"]" * 50, "nested deeper"),
        (b'{"ts": 1790000000, "temp": NaN}', "not valid JSON"),
        (b'{"ts": 1790000000, "temp": "21.5"}', "is a str, expected a number"),
        (b'{"ts": 1790000000, "temp": true}', "is a bool"),
        (b'{"ts": 1790000000, "temp": {"v": 1}}', "is a dict"),
        (b'{"ts": 1790000000}', "'temp' is missing and has no default"),
        (b'{"temp": 1}', "missing time field 'ts'"),
        (b'{"ts": 1790000000, "temp": 1, "temp": 2}', "duplicate key 'temp'"),
        (b'{"ts": 99999999999999, "temp": 1}', "beyond the year 2262"),
        (b'{"ts": 4102444800000, "temp": 1}', "in the future"),
        (b'{"ts": 1, "temp": 1}', "in the past"),
        (b'{"ts": "2026-01-01T00:00:00", "temp": 1}', "no UTC offset"),
        (b'{"ts": 1e400, "temp": 1}', "infinity"),
        (b'[{"ts": 1790000000, "temp": 1}, 5]', "reading 1: expected a JSON object"),
        (b"[]", "empty JSON array"),
        (b'"just a string"', "expected a JSON object"),
        (b"x" * 300_000, "over the 262144-byte limit"),
    ],
)
def test_bad_json_payloads_become_dead_letters_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=None) as err:
        dec().decode(payload, "plant/k/t", NOW)
    assert reason in str(err.value)


def test_limits_on_readings_per_payload_and_topic_levels() -> None:
    many = b"[" + b",".join(b'{"ts": 1790000000, "temp": 1}' for _ in range(11)) + b"]"
    with pytest.raises(PayloadError, match="11 readings in one payload; the limit is 10"):
        dec(max_readings=10).decode(many, "p/k", NOW)
    with pytest.raises(PayloadError, match="no level 1"):
        dec().decode(b'{"ts": 1790000000, "temp": 1}', "flat", NOW)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"n": "temp", "v": 1}', "non-empty JSON array"),
        (b'[{"bn": "d:", "n": "temp", "vs": "hot"}]', "not numeric"),
        (b'[{"bn": "d:", "n": "temp"}]', "no value"),
        (b'[{"bn": 5, "n": "temp", "v": 1}]', "bn 5 is not a string"),
        (b'[{"bn": "d:", "n": "rpm", "v": 1}]', "no SenML record names a declared field"),
    ],
)
def test_bad_senml(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        dec("senml", key="senml-name").decode(payload, "s/x", NOW)
    assert reason in str(err.value)


def test_schema_problems_are_reported_for_validation() -> None:
    assert check_schema("xml", "topic[1]", "ts", ["t"], {}, []) == [
        "format='xml': use one of json, senml, csv, number"
    ]
    assert "csv_columns" in check_schema("csv", "dev", "ts", ["t"], {}, [])[0]
    assert "exactly one field" in check_schema("number", "dev", "received", ["a", "b"], {}, [])[0]
    assert "type 'str'" in check_schema("json", "topic[1]", "ts", ["t"], {"t": "str"}, [])[0]


def test_a_timestamp_beyond_int64_ns_is_a_clear_error_not_an_overflow() -> None:
    from edgeflow.connectors.parse import parse_time

    with pytest.raises(ValueError, match=r"beyond the year 2262.*time_unit="):
        parse_time(60_000_000_000, "auto")  # 6e10 s: year 3870
    assert parse_time(60_000_000_000, "ns") == 60_000_000_000


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"ts": 1790000000, "temp": 1, "\\u0074emp": 2}', "duplicate key 'temp'"),
        (b'{"ts": 1790000000, "temp": 1, "x": {"y": 1, "y": 2}}', "duplicate key 'y'"),
        (b'{"ts": "9999-12-31T23:59:59Z", "temp": 1}', "after 2262-04-11"),
        (b'{"ts": "0001-01-01T00:00:00+01:00", "temp": 1}', "before 1677-09-21"),
        (b'{"ts": 253402300799000, "temp": 1}', "ambiguous"),
        (b'{"ts": 1790000000, "temp": 1%s}' % (b"0" * 400), "not valid JSON"),
        (b'{"ts": 1790000000, "temp": "%s"}' % (b"9" * 100_000), "is a str"),
    ],
)
def test_the_shared_record_rules(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as err:
        dec().decode(payload, "plant/k/t", NOW)
    assert reason in str(err.value) and len(str(err.value)) < 400


def test_keys_times_and_csv_cells_by_the_shared_rules() -> None:
    with pytest.raises(PayloadError, match="keys are at most 256 bytes"):
        dec(key="id").decode(b'{"id": "%s", "ts": 1790000000, "temp": 1}' % (b"k" * 257), "t", NOW)
    assert dec(key="id").decode(
        b'{"id": "%s", "ts": 1790000000, "temp": 1}' % (b"k" * 256), "t", NOW
    )
    with pytest.raises(PayloadError, match="outside int64 nanoseconds"):
        dec("senml", fields=("temp",)).decode(
            b'[{"bn":"d:","n":"temp","v":1,"t":1e12}]', "s/d", NOW
        )
    d = dec("csv", key="dev", csv_columns=("dev", "ts", "temp"))
    assert d.decode(b'"m,1", 1790000000, 19.5', "t", NOW) == [("m,1", NOW, [19.5])]
    with pytest.raises(PayloadError, match="'NaN' is not a finite number"):
        d.decode(b"m1,1790000000,NaN", "t", NOW)
