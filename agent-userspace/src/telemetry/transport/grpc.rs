//! One OTLP/gRPC unary call on tonic's channel, its request framed here. tonic compresses at
//! a fixed level 6 (its code says so), which took about 5 ms of the daemon's CPU per 1,000
//! events: here gzip runs at level 1, as the HTTP transport's does, for a little more to
//! send over loopback. Framing a request is the easy half of gRPC (a flag byte, compressed or
//! not, the message's length as a big-endian u32, the message); the answer, whose status
//! may come in headers or trailers, is read by tonic's own decoder.

use std::{convert::Infallible, future::poll_fn};

use bytes::{BufMut as _, BytesMut};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tonic::{
    body::Body,
    codec::{Codec as _, CompressionEncoding, Streaming},
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
        let mut out = super::gzip(request, out.writer())
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

/// How the answer's message is compressed. grpc-go servers (the OpenTelemetry Collector's)
/// answer in the encoding of the request, whatever the client said it accepts.
fn answer_encoding(headers: &http::HeaderMap) -> Result<Option<CompressionEncoding>, Status> {
    match headers.get("grpc-encoding").map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(None),
        Some(b"gzip") => Ok(Some(CompressionEncoding::Gzip)),
        Some(other) => Err(Status::unimplemented(format!(
            "the collector answered in encoding {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
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
        call = call
            .header("grpc-encoding", "gzip")
            .header("grpc-accept-encoding", "gzip");
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
    let encoding = answer_encoding(response.headers())?;
    let decoder = tonic_prost::ProstCodec::<Request, A>::default().decoder();
    let mut answer = Streaming::new_response(decoder, response.into_body(), status, encoding, None);
    let message = answer.message().await?;
    // Reads the trailers: a failure's status is there.
    answer.trailers().await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use bytes::Bytes;
    use flate2::{read::GzDecoder, write::GzEncoder, Compression as GzLevel};
    use http_body_util::BodyExt as _;
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
    };
    use prost::Message as _;
    use tonic::transport::Endpoint;

    use super::*;
    use crate::telemetry::proto::Envelope;

    /// What the test collector answers: its status, and whether it gzips its message.
    #[derive(Clone, Copy)]
    struct Answer {
        code: Code,
        gzip: bool,
    }

    /// A gRPC collector on loopback that checks each request's framing and content and
    /// answers a partial success (2 rejected), as grpc-go does: in the request's encoding.
    async fn collector(answer: Answer) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req: http::Request<_>| async move {
                let gzipped = req.headers().get("grpc-encoding").map(|v| v.as_bytes());
                assert_eq!(gzipped, Some(&b"gzip"[..]));
                let body: hyper::body::Incoming = req.into_body();
                let body = body.collect().await.unwrap().to_bytes();
                assert_eq!(body[0], 1, "the compressed flag");
                let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
                assert_eq!(body.len(), 5 + len);
                let mut message = Vec::new();
                GzDecoder::new(&body[5..])
                    .read_to_end(&mut message)
                    .unwrap();
                let request = ExportLogsServiceRequest::decode(message.as_slice()).unwrap();
                assert_eq!(request.resource_logs.len(), 1);

                let reply = ExportLogsServiceResponse {
                    partial_success: Some(ExportLogsPartialSuccess {
                        rejected_log_records: 2,
                        error_message: "two too many".into(),
                    }),
                }
                .encode_to_vec();
                let mut frame = vec![u8::from(answer.gzip)];
                let payload = if answer.gzip {
                    let mut e = GzEncoder::new(Vec::new(), GzLevel::fast());
                    e.write_all(&reply).unwrap();
                    e.finish().unwrap()
                } else {
                    reply
                };
                frame.extend((payload.len() as u32).to_be_bytes());
                frame.extend(payload);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", (answer.code as i32).into());
                let frames = vec![
                    Ok::<_, Infallible>(Frame::data(Bytes::from(frame))),
                    Ok(Frame::trailers(trailers)),
                ];
                let mut response =
                    http::Response::builder().header(header::CONTENT_TYPE, "application/grpc");
                if answer.gzip {
                    response = response.header("grpc-encoding", "gzip");
                }
                Ok::<_, Infallible>(
                    response
                        .body(StreamBody::new(futures_util::stream::iter(frames)))
                        .unwrap(),
                )
            });
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
                .unwrap();
        });
        addr
    }

    async fn call(answer: Answer) -> Result<Option<ExportLogsServiceResponse>, Status> {
        let addr = collector(answer).await;
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let resource = opentelemetry_sdk::Resource::builder_empty().build();
        let request = Envelope::new(&resource).request(Bytes::new());
        unary(
            &channel,
            super::super::LOGS_EXPORT,
            &request,
            true,
            &MetadataMap::new(),
        )
        .await
    }

    #[tokio::test]
    async fn a_gzipped_request_is_framed_for_the_collector_and_its_gzipped_answer_read() {
        for gzip in [true, false] {
            let answer = call(Answer {
                code: Code::Ok,
                gzip,
            })
            .await
            .unwrap()
            .and_then(|a| a.partial_success)
            .expect("the partial success");
            assert_eq!(answer.rejected_log_records, 2, "gzip {gzip}");
        }
    }

    #[tokio::test]
    async fn a_status_in_the_trailers_fails_the_call() {
        let e = call(Answer {
            code: Code::ResourceExhausted,
            gzip: true,
        })
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
    }
}
