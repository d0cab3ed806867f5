//! One SOAP call: an HTTP/1.1 POST on a fresh connection (hyper), bounded in time and size.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;

use crate::soap::MAX_RESPONSE_BYTES;

/// A URL's host, port and path, for `http://` URLs (cameras' device services).
pub fn split_http_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(end) = authority.strip_prefix('[').and_then(|a| a.find(']')) {
        let host = &authority[1..=end];
        let port = match &authority[end + 2..] {
            "" => 80,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (authority.to_string(), 80),
        }
    };
    (!host.is_empty()).then(|| (host, port, path.to_string()))
}

/// POSTs `body` to `url` and returns the HTTP status and the answer's text.
pub async fn post(
    url: &str,
    action: &str,
    body: String,
    timeout: Duration,
) -> Result<(u16, String), String> {
    tokio::time::timeout(timeout, call(url, action, body))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

async fn call(url: &str, action: &str, body: String) -> Result<(u16, String), String> {
    let (host, port, path) =
        split_http_url(url).ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let request = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::CONTENT_TYPE,
            format!(r#"application/soap+xml; charset=utf-8; action="{action}""#),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let bytes = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_http_url("http://10.0.9.20/onvif/device_service"),
            Some(("10.0.9.20".into(), 80, "/onvif/device_service".into()))
        );
        assert_eq!(
            split_http_url("http://[fe80::1]:8080/onvif"),
            Some(("fe80::1".into(), 8080, "/onvif".into()))
        );
        assert_eq!(
            split_http_url("http://cam:81"),
            Some(("cam".into(), 81, "/".into()))
        );
        assert_eq!(split_http_url("https://cam/onvif"), None);
        assert_eq!(split_http_url("http://:80/x"), None);
    }
}
