//! A shim in front of the plugin's registration socket that makes the kubelet's requests
//! valid HTTP/2.
//!
//! The kubelet's plugin watcher dials a registration socket with grpc-go's defaults
//! (`pkg/kubelet/pluginmanager/operationexecutor/operation_generator.go`, `dial`: no
//! `WithAuthority`, unlike the device manager's dial, which passes `localhost`), so every
//! request's `:authority` is the socket path, percent-encoded
//! (`var%2Flib%2Fkubelet%2Fplugins_registry%2Fdowser.dev-reg.sock`). RFC 9113 §8.3.1 allows
//! only `[userinfo@]host[:port]` there, and the HTTP/2 server of this binary (h2) resets such
//! a stream with PROTOCOL_ERROR, so the kubelet could never read the plugin's info.
//!
//! The shim reads the kubelet's frames, rewrites `:authority` to `localhost` in each header
//! block (HPACK, RFC 7541: decoded with the kubelet's table, encoded again with a table of
//! its own towards the server) and passes every other frame, and everything the server
//! sends back, through unchanged. The DRA service itself needs none of this: the kubelet
//! dials it as `unix:<path>`, for which grpc-go sends `localhost`.

use fluke_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload a peer must accept without a setting (RFC 9113 §4.2).
const MAX_FRAME: usize = 16_384;
/// The authority every request gets.
const LOCALHOST: &[u8] = b"localhost";

/// Rewrites header blocks, keeping both HPACK tables in step with the two peers.
pub struct Rewriter {
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self {
            decoder: Decoder::new(),
            encoder: Encoder::new(),
        }
    }
}

/// Whether an authority is one HTTP/2 accepts: no path separator, no percent-encoding.
fn acceptable(authority: &[u8]) -> bool {
    !authority.is_empty() && !authority.iter().any(|b| matches!(b, b'/' | b'%'))
}

impl Rewriter {
    /// The header block `block` with an unacceptable `:authority` replaced by `localhost`.
    pub fn block(&mut self, block: &[u8]) -> Result<Vec<u8>, String> {
        let headers = self
            .decoder
            .decode(block)
            .map_err(|e| format!("undecodable header block: {e:?}"))?;
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .into_iter()
            .map(|(name, value)| {
                if name == b":authority" && !acceptable(&value) {
                    (name, LOCALHOST.to_vec())
                } else {
                    (name, value)
                }
            })
            .collect();
        Ok(self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))))
    }
}

/// The frames that carry a header block: HEADERS, then CONTINUATION frames when it does
/// not fit in one.
pub fn header_frames(stream: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
    let chunks: Vec<&[u8]> = if block.is_empty() {
        vec![block]
    } else {
        block.chunks(MAX_FRAME).collect()
    };
    let mut out = Vec::with_capacity(block.len() + 9 * chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let kind = if i == 0 { HEADERS } else { CONTINUATION };
        let mut flags = 0;
        if i == 0 && end_stream {
            flags |= END_STREAM;
        }
        if i + 1 == chunks.len() {
            flags |= END_HEADERS;
        }
        let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The header block fragment of a HEADERS frame's payload (padding and priority removed).
fn fragment(flags: u8, payload: &[u8]) -> Result<&[u8], String> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = usize::from(*payload.first().ok_or("empty padded HEADERS frame")?);
        start += 1;
        end = end
            .checked_sub(pad)
            .filter(|e| *e >= start)
            .ok_or("HEADERS padding longer than the frame")?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    payload
        .get(start..end)
        .ok_or_else(|| "HEADERS frame too short".to_string())
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Copies a client's HTTP/2 stream from `from` to `to`, rewriting `:authority` in every
/// header block. Ends when the client closes its side.
pub async fn rewrite<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(invalid("not an HTTP/2 client preface".into()));
    }
    to.write_all(&preface).await?;
    to.flush().await?;
    let mut rewriter = Rewriter::default();
    // A header block whose CONTINUATION frames are still to come.
    let mut pending: Option<(u32, bool, Vec<u8>)> = None;
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        from.read_exact(&mut payload).await?;
        let complete = match (kind, pending.take()) {
            (HEADERS, None) => {
                let block = fragment(flags, &payload).map_err(invalid)?.to_vec();
                Some((stream, flags & END_STREAM != 0, block))
            }
            (CONTINUATION, Some((s, end_stream, mut block))) if s == stream => {
                block.extend_from_slice(&payload);
                Some((s, end_stream, block))
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "a frame inside a header block (RFC 9113 §6.10)".into(),
                ));
            }
            (_, None) => {
                to.write_all(&head).await?;
                to.write_all(&payload).await?;
                to.flush().await?;
                None
            }
        };
        if let Some((stream, end_stream, block)) = complete {
            if flags & END_HEADERS == 0 {
                pending = Some((stream, end_stream, block));
                continue;
            }
            let block = rewriter.block(&block).map_err(invalid)?;
            to.write_all(&header_frames(stream, end_stream, &block))
                .await?;
            to.flush().await?;
        }
    }
    to.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request as grpc-go sends it to a socket path (the kubelet's registration dial).
    fn request(encoder: &mut Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/pluginregistration.Registration/GetInfo"),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ])
    }

    #[tokio::test]
    async fn the_kubelets_authority_reaches_the_server_as_localhost() {
        let mut client = Encoder::new();
        let kubelet_authority = b"var%2Flib%2Fkubelet%2Fplugins_registry%2Fdowser.dev-reg.sock";
        let mut wire = PREFACE.to_vec();
        // SETTINGS, then two requests (the second reuses the client's table), the first
        // split over a CONTINUATION, then a DATA frame.
        wire.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let first = request(&mut client, kubelet_authority);
        let (a, b) = first.split_at(10);
        wire.extend_from_slice(&[0, 0, 10, HEADERS, 0, 0, 0, 0, 1]);
        wire.extend_from_slice(a);
        let len = u8::try_from(b.len()).unwrap();
        wire.extend_from_slice(&[0, 0, len, CONTINUATION, END_HEADERS, 0, 0, 0, 1]);
        wire.extend_from_slice(b);
        let second = request(&mut client, kubelet_authority);
        wire.extend_from_slice(&header_frames(3, true, &second));
        wire.extend_from_slice(&[0, 0, 5, 0x0, END_STREAM, 0, 0, 0, 1, 0, 0, 0, 0, 0]);

        let mut out = Vec::new();
        rewrite(&wire[..], &mut out).await.unwrap();

        // What the server reads: the preface, SETTINGS, two whole header blocks with
        // `localhost`, the DATA frame untouched.
        assert_eq!(&out[..24], PREFACE);
        let mut rest = &out[24..];
        let mut server = Decoder::new();
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags, stream) = (rest[3], rest[4], rest[8]);
            let payload = &rest[9..9 + len];
            if kind == HEADERS {
                assert_ne!(flags & END_HEADERS, 0);
                let headers = server.decode(payload).unwrap();
                let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
                assert_eq!(authority.1, b"localhost");
                assert!(headers.iter().any(
                    |(n, v)| n == b":path" && v == b"/pluginregistration.Registration/GetInfo"
                ));
            }
            seen.push((kind, flags & END_STREAM, stream));
            rest = &rest[9 + len..];
        }
        assert_eq!(
            seen,
            [
                (0x4, 0, 0),
                (HEADERS, 0, 1),
                (HEADERS, END_STREAM, 3),
                (0x0, END_STREAM, 1)
            ]
        );
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut client = Encoder::new();
        let mut rewriter = Rewriter::default();
        let block = rewriter
            .block(&request(&mut client, b"localhost:50051"))
            .unwrap();
        let headers = Decoder::new().decode(&block).unwrap();
        assert!(
            headers
                .iter()
                .any(|(n, v)| n == b":authority" && v == b"localhost:50051")
        );
    }

    #[tokio::test]
    async fn garbage_is_refused_not_passed_on() {
        let mut out = Vec::new();
        let err = rewrite(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &mut out)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(out.is_empty());
    }
}
