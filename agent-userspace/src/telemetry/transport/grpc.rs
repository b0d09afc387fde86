//! One OTLP/gRPC unary call on tonic's channel, its request framed here. tonic compresses at
//! a fixed level 6 (its code says so), which took about 5 ms of the daemon's CPU per 1,000
//! events: here gzip runs at level 1, as the HTTP transport's does, for a little more to
//! send over loopback. Framing a request is the easy half of gRPC (a flag byte, compressed or
//! not, the message's length as a big-endian u32, the message); the answer, whose status
//! may come in headers or trailers, is read by tonic's own decoder.

use std::{convert::Infallible, future::poll_fn, io::Write as _};

use bytes::{BufMut as _, BytesMut};
use flate2::{write::GzEncoder, Compression as GzLevel};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tonic::{
    body::Body,
    codec::{Codec as _, Streaming},
    codegen::{
        http::{self, header},
        Service as _,
    },
    metadata::MetadataMap,
    transport::Channel,
    Code, Status,
};

use super::super::proto::Request;

/// gRPC's message prefix: the compressed flag and the length.
const PREFIX: usize = 5;

/// The request body: the prefixed message, gzipped (level 1) when asked, else its parts as
/// they are, uncopied.
fn body(request: &Request, gzip: bool) -> Result<Body, Status> {
    let parts = request.parts();
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert_eq!(len, prost::Message::encoded_len(request));
    let mut frames = Vec::with_capacity(parts.len() + 1);
    if gzip {
        let mut out = BytesMut::with_capacity(PREFIX + len / 4);
        out.put_slice(&[1, 0, 0, 0, 0]);
        let mut encoder = GzEncoder::new(out.writer(), GzLevel::fast());
        for p in parts {
            encoder
                .write_all(p)
                .map_err(|e| Status::internal(format!("compressing: {e}")))?;
        }
        let mut out = encoder
            .finish()
            .map_err(|e| Status::internal(format!("compressing: {e}")))?
            .into_inner();
        let compressed = u32::try_from(out.len() - PREFIX)
            .map_err(|_| Status::out_of_range("an export over 4 GiB"))?;
        out[1..PREFIX].copy_from_slice(&compressed.to_be_bytes());
        frames.push(out.freeze());
    } else {
        let len = u32::try_from(len).map_err(|_| Status::out_of_range("an export over 4 GiB"))?;
        let mut prefix = BytesMut::with_capacity(PREFIX);
        prefix.put_u8(0);
        prefix.put_u32(len);
        frames.push(prefix.freeze());
        frames.extend(parts.into_iter().cloned());
    }
    let frames = frames
        .into_iter()
        .map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Ok(Body::new(StreamBody::new(futures_util::stream::iter(
        frames,
    ))))
}

/// Calls gRPC method `path` with `request`; the collector's answer, None when it accepted
/// with a status alone.
pub(super) async fn unary<A: prost::Message + Default + Send + 'static>(
    channel: &Channel,
    path: &'static str,
    request: &Request,
    gzip: bool,
    metadata: &MetadataMap,
) -> Result<Option<A>, Status> {
    let mut call = http::Request::builder()
        .method(http::Method::POST)
        .version(http::Version::HTTP_2)
        // The channel adds the endpoint's scheme and authority.
        .uri(path)
        .header(header::TE, "trailers")
        .header(header::CONTENT_TYPE, "application/grpc");
    if gzip {
        call = call.header("grpc-encoding", "gzip");
    }
    let mut call = call
        .body(body(request, gzip)?)
        .map_err(|e| Status::internal(format!("building the request: {e}")))?;
    let headers = call.headers_mut();
    for (k, v) in metadata.clone().into_headers().iter() {
        headers.append(k, v.clone());
    }
    let mut channel = channel.clone();
    poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    let response = channel
        .call(call)
        .await
        .map_err(|e| Status::from_error(e.into()))?;
    // A status in the headers is a trailers-only answer: no message follows.
    if let Some(status) = Status::from_header_map(response.headers()) {
        return if status.code() == Code::Ok {
            Ok(None)
        } else {
            Err(status)
        };
    }
    let status = response.status();
    let decoder = tonic_prost::ProstCodec::<Request, A>::default().decoder();
    let mut answer = Streaming::new_response(decoder, response.into_body(), status, None, None);
    let message = answer.message().await?;
    // Reads the trailers: a failure's status is there.
    answer.trailers().await?;
    Ok(message)
}
