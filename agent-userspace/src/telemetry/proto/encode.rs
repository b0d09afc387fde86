//! Log records and spans written straight as protobuf bytes from borrowed descriptions.
//! Building the messages first (a `String` per attribute key, a `Vec` per id) and letting
//! prost encode them (it measures every nested message again at each level above it) was
//! over half of the export's CPU. The bytes are exactly those prost writes for the messages
//! of [`super::reference`]: a test compares them for a record of every kind.
//!
//! Fields are written in tag order and, as proto3 asks, scalars and strings equal to their
//! default are left out (a oneof's member and a present message never are).

use bytes::BufMut;
use opentelemetry::{Array, KeyValue, Value};
use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType},
    Message as _,
};

use super::{HAS_IS_REMOTE, SAMPLED};
use crate::telemetry::records::Described;

/// `ScopeLogs.log_records` and `ScopeSpans.spans`: the field each record is written as.
const RECORDS_FIELD: u32 = 2;
/// `Span.kind` = `SPAN_KIND_INTERNAL`.
const INTERNAL: u64 = 1;
/// `Status.code` = `STATUS_CODE_ERROR`.
const ERROR: u64 = 2;

/// The length of a length-delimited field `tag` of `len` bytes, key included.
pub(super) fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The key and length of a length-delimited field; its `len` bytes follow.
pub(super) fn put_delimited(tag: u32, len: usize, out: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn put_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    put_delimited(tag, bytes.len(), out);
    out.put_slice(bytes);
}

/// A proto3 string or bytes field: nothing when empty.
fn opt_bytes_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        delimited_len(tag, bytes.len())
    }
}

fn put_opt_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_bytes(tag, bytes, out);
    }
}

/// A proto3 fixed64 field: nothing when 0.
fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + 8
    }
}

fn put_fixed64(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.put_u64_le(v);
    }
}

fn put_fixed32(tag: u32, v: u32, out: &mut Vec<u8>) {
    encode_key(tag, WireType::ThirtyTwoBit, out);
    out.put_u32_le(v);
}

/// A proto3 varint field: nothing when 0.
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn put_varint(tag: u32, v: u64, out: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }
}

/// The length of an `AnyValue` message of `v` (its oneof member is always written).
fn any_len(v: &Value) -> usize {
    match v {
        Value::Bool(_) => key_len(2) + 1,
        Value::I64(i) => key_len(3) + encoded_len_varint(*i as u64),
        Value::F64(_) => key_len(4) + 8,
        Value::String(s) => delimited_len(1, s.as_str().len()),
        Value::Array(Array::String(items)) => delimited_len(5, strings_len(items)),
        // No record has other arrays: the generated message's own encoding.
        other => super::value(other.clone()).encoded_len(),
    }
}

fn put_any(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            out.put_u8(u8::from(*b));
        }
        Value::I64(i) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(*i as u64, out);
        }
        Value::F64(f) => {
            encode_key(4, WireType::SixtyFourBit, out);
            out.put_f64_le(*f);
        }
        Value::String(s) => put_bytes(1, s.as_str().as_bytes(), out),
        Value::Array(Array::String(items)) => {
            put_delimited(5, strings_len(items), out);
            for s in items {
                let s = s.as_str();
                put_delimited(1, delimited_len(1, s.len()), out);
                put_bytes(1, s.as_bytes(), out);
            }
        }
        other => super::value(other.clone()).encode_raw(out),
    }
}

/// The length of an `ArrayValue` of strings: each an `AnyValue` of field 1.
fn strings_len(items: &[opentelemetry::StringValue]) -> usize {
    items
        .iter()
        .map(|s| delimited_len(1, delimited_len(1, s.as_str().len())))
        .sum()
}

/// The length of a `KeyValue` message.
fn key_value_len(kv: &KeyValue) -> usize {
    opt_bytes_len(1, kv.key.as_str().as_bytes()) + delimited_len(2, any_len(&kv.value))
}

/// The attributes as repeated `KeyValue` field `tag`.
fn attributes_len<'a>(tag: u32, kvs: impl Iterator<Item = &'a KeyValue>) -> usize {
    kvs.map(|kv| delimited_len(tag, key_value_len(kv))).sum()
}

fn put_attributes<'a>(tag: u32, kvs: impl Iterator<Item = &'a KeyValue>, out: &mut Vec<u8>) {
    for kv in kvs {
        put_delimited(tag, key_value_len(kv), out);
        put_opt_bytes(1, kv.key.as_str().as_bytes(), out);
        put_delimited(2, any_len(&kv.value), out);
        put_any(&kv.value, out);
    }
}

/// Unix nanoseconds of `t` (0 before the epoch).
pub(super) fn nanos(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The span a log record is correlated with: its own when it has one, else the session's
/// root span.
fn log_span_id(d: &Described) -> [u8; 8] {
    match &d.span {
        Some(plan) if !plan.root => d.ids.span_id.to_bytes(),
        _ => d.ids.root_span_id.to_bytes(),
    }
}

/// Appends `d` as one `LogRecord` of a `ScopeLogs` (key and length first), observed at
/// `observed` (Unix nanoseconds).
pub fn put_log_record(d: &Described, observed: u64, out: &mut Vec<u8>) {
    let time = nanos(d.time);
    let severity = d.severity as i32 as u64;
    let severity_text = d.severity.name().as_bytes();
    let body_len = delimited_len(1, d.body.len());
    let trace_id = d.ids.trace_id.to_bytes();
    let span_id = log_span_id(d);
    let len = fixed64_len(1, time)
        + varint_len(2, severity)
        + opt_bytes_len(3, severity_text)
        + delimited_len(5, body_len)
        + attributes_len(6, d.attributes.iter())
        + key_len(8)
        + 4
        + delimited_len(9, trace_id.len())
        + delimited_len(10, span_id.len())
        + fixed64_len(11, observed)
        + opt_bytes_len(12, d.event_name.as_bytes());
    out.reserve(delimited_len(RECORDS_FIELD, len));
    put_delimited(RECORDS_FIELD, len, out);
    put_fixed64(1, time, out);
    put_varint(2, severity, out);
    put_opt_bytes(3, severity_text, out);
    put_delimited(5, body_len, out);
    put_bytes(1, d.body.as_bytes(), out);
    put_attributes(6, d.attributes.iter(), out);
    put_fixed32(8, SAMPLED, out);
    put_bytes(9, &trace_id, out);
    put_bytes(10, &span_id, out);
    put_fixed64(11, observed, out);
    put_opt_bytes(12, d.event_name.as_bytes(), out);
}

/// Appends `d`'s span as one `Span` of a `ScopeSpans` (key and length first), for kinds
/// that have one; whether it did.
pub fn put_span(d: &Described, out: &mut Vec<u8>) -> bool {
    let Some(plan) = &d.span else {
        return false;
    };
    let trace_id = d.ids.trace_id.to_bytes();
    let (span_id, parent) = if plan.root {
        (d.ids.root_span_id.to_bytes(), None)
    } else {
        (
            d.ids.span_id.to_bytes(),
            Some(d.ids.root_span_id.to_bytes()),
        )
    };
    let parent: &[u8] = parent.as_ref().map_or(&[], |p| p.as_slice());
    let (start, end) = (nanos(plan.start), nanos(plan.end));
    let attributes = || d.attributes.iter().chain(plan.attributes.iter());
    let (message, code) = match &plan.error {
        Some(message) => (message.as_bytes(), ERROR),
        None => (&[][..], 0),
    };
    let status_len = opt_bytes_len(2, message) + varint_len(3, code);
    let len = delimited_len(1, trace_id.len())
        + delimited_len(2, span_id.len())
        + opt_bytes_len(4, parent)
        + opt_bytes_len(5, plan.name.as_bytes())
        + varint_len(6, INTERNAL)
        + fixed64_len(7, start)
        + fixed64_len(8, end)
        + attributes_len(9, attributes())
        + delimited_len(15, status_len)
        + key_len(16)
        + 4;
    out.reserve(delimited_len(RECORDS_FIELD, len));
    put_delimited(RECORDS_FIELD, len, out);
    put_bytes(1, &trace_id, out);
    put_bytes(2, &span_id, out);
    put_opt_bytes(4, parent, out);
    put_opt_bytes(5, plan.name.as_bytes(), out);
    put_varint(6, INTERNAL, out);
    put_fixed64(7, start, out);
    put_fixed64(8, end, out);
    put_attributes(9, attributes(), out);
    put_delimited(15, status_len, out);
    put_opt_bytes(2, message, out);
    put_varint(3, code, out);
    put_fixed32(16, SAMPLED | HAS_IS_REMOTE, out);
    true
}
