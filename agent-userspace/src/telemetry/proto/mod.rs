//! OTLP requests built directly as protobuf bytes. The SDK's path (an `SdkLogRecord` or
//! `SpanData` per record, then its per-batch grouping by resource and scope, which builds and
//! hashes a scope per record, then a copy of every attribute) took about half of the export's
//! CPU, and building prost messages to encode them most of the rest: every record is written
//! once, from its description, by [`encode`].
//!
//! The bytes are those the SDK's exporters send (tests check each record against the SDK's
//! own conversion, and the bytes against prost's encoding of those messages), so collectors
//! see no difference.

mod encode;
#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use bytes::{BufMut, Bytes, BytesMut};
use opentelemetry::Value;
use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
};
use opentelemetry_sdk::Resource as SdkResource;
use prost::Message as _;

use encode::{delimited_len, put_delimited};
pub use encode::{put_log_record, put_span};

/// `TraceFlags::SAMPLED`: every exported record is.
const SAMPLED: u32 = 1;
/// OTLP's `SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK`: the parent is known to be local.
const HAS_IS_REMOTE: u32 = 0x100;

/// What every request carries once: the resource and the instrumentation scope, converted
/// and encoded when the exporter starts rather than per batch.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The `Resource` message, encoded.
    resource: Vec<u8>,
    /// The `InstrumentationScope` message, encoded.
    scope: Vec<u8>,
    schema_url: String,
}

impl Envelope {
    /// The envelope of `resource` and the daemon's scope.
    pub fn new(resource: &SdkResource) -> Self {
        let scope = super::export::scope();
        Self {
            resource: Resource {
                attributes: resource
                    .iter()
                    .map(|(k, v)| key_value(k.as_str().to_owned(), value(v.clone())))
                    .collect(),
                dropped_attributes_count: 0,
                entity_refs: Vec::new(),
            }
            .encode_to_vec(),
            scope: InstrumentationScope {
                name: scope.name().to_owned(),
                version: scope.version().unwrap_or_default().to_owned(),
                ..Default::default()
            }
            .encode_to_vec(),
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }

    /// One request of `records`, each written by [`put_log_record`] (a logs request) or
    /// [`put_span`] (a traces request): both requests nest their records alike
    /// (`resource_logs`/`resource_spans` 1 { resource 1, scope_logs/scope_spans 2 { scope 1,
    /// records 2 }, schema_url 3 }).
    pub fn request(&self, records: Bytes) -> Request {
        let (resource, scope) = (&self.resource, &self.scope);
        let scoped = delimited_len(1, scope.len()) + records.len();
        let mut resourced = delimited_len(1, resource.len()) + delimited_len(2, scoped);
        if !self.schema_url.is_empty() {
            resourced += delimited_len(3, self.schema_url.len());
        }
        let mut head = BytesMut::with_capacity(resource.len() + scope.len() + 32);
        put_delimited(1, resourced, &mut head);
        put_delimited(1, resource.len(), &mut head);
        head.put_slice(resource);
        put_delimited(2, scoped, &mut head);
        put_delimited(1, scope.len(), &mut head);
        head.put_slice(scope);
        let mut tail = BytesMut::new();
        if !self.schema_url.is_empty() {
            put_delimited(3, self.schema_url.len(), &mut tail);
            tail.put_slice(self.schema_url.as_bytes());
        }
        Request {
            head: head.freeze(),
            records,
            tail: tail.freeze(),
        }
    }
}

/// One export request, encoded. It is a prost message so that tonic's codec and the HTTP
/// body take it as it is; it is never decoded.
#[derive(Clone, Debug, Default)]
pub struct Request {
    head: Bytes,
    records: Bytes,
    tail: Bytes,
}

impl Request {
    /// Its bytes, in three parts (the records are not copied to put them together).
    pub fn parts(&self) -> [&Bytes; 3] {
        [&self.head, &self.records, &self.tail]
    }
}

impl prost::Message for Request {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        buf.put_slice(&self.records);
        buf.put_slice(&self.tail);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.head.len() + self.records.len() + self.tail.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

fn key_value(key: String, value: AnyValue) -> KeyValue {
    KeyValue {
        key,
        value: Some(value),
        key_strindex: 0,
    }
}

/// An attribute value as the generated message, its string moved rather than copied.
fn value(v: Value) -> AnyValue {
    use any_value::Value as V;
    let v = match v {
        Value::Bool(b) => V::BoolValue(b),
        Value::I64(i) => V::IntValue(i),
        Value::F64(f) => V::DoubleValue(f),
        Value::String(s) => V::StringValue(s.into()),
        Value::Array(opentelemetry::Array::String(items)) => V::ArrayValue(ArrayValue {
            values: items
                .into_iter()
                .map(|s| AnyValue {
                    value: Some(V::StringValue(s.into())),
                })
                .collect(),
        }),
        // No record has other arrays; the SDK's conversion for the rare case.
        other => return other.into(),
    };
    AnyValue { value: Some(v) }
}

#[cfg(test)]
fn attributes(kvs: Vec<opentelemetry::KeyValue>) -> Vec<KeyValue> {
    kvs.into_iter()
        .map(|kv| key_value(kv.key.as_str().to_owned(), value(kv.value)))
        .collect()
}
