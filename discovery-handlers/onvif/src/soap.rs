//! ONVIF device service calls over SOAP 1.2 (Core Specification 8: GetSystemDateAndTime,
//! GetDeviceInformation, GetCapabilities), with a WS-Security UsernameToken and a password
//! digest (Core 5.12; OASIS Username Token Profile 1.0): the requests and reading the
//! answers. No I/O here.

use base64::Engine;
use sha1::{Digest, Sha1};

/// Largest SOAP answer read.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// What GetDeviceInformation says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInformation {
    pub manufacturer: String,
    pub model: String,
    pub firmware_version: String,
    pub serial_number: String,
    pub hardware_id: String,
}

/// Why a call gave no answer dowser can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The camera refused the call without (or with these) credentials (`ter:NotAuthorized`,
    /// HTTP 401).
    NotAuthorized,
    /// A SOAP fault with this code.
    Fault(String),
    /// Not a SOAP answer with what was asked.
    Garbage,
    /// No answer: connection refused, timed out or broken.
    Transport(String),
}

/// A user and password digest for one request.
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
    /// Random bytes, new for every request.
    pub nonce: [u8; 16],
    /// The camera's time of the request (`2026-12-04T22:00:00Z`).
    pub created: String,
}

/// `Base64(SHA-1(nonce + created + password))`.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(created.as_bytes());
    h.update(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// XML text with `&`, `<`, `>`, `"` and `'` escaped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn envelope(body: &str, credentials: Option<&Credentials>) -> String {
    let header = match credentials {
        None => String::new(),
        Some(c) => {
            let b64 = base64::engine::general_purpose::STANDARD;
            format!(
                concat!(
                    r#"<s:Header><Security s:mustUnderstand="1" xmlns="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd">"#,
                    r#"<UsernameToken><Username>{}</Username>"#,
                    r#"<Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest">{}</Password>"#,
                    r#"<Nonce EncodingType="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary">{}</Nonce>"#,
                    r#"<Created xmlns="http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd">{}</Created>"#,
                    r#"</UsernameToken></Security></s:Header>"#
                ),
                escape(c.username),
                password_digest(&c.nonce, &c.created, c.password),
                b64.encode(c.nonce),
                escape(&c.created),
            )
        }
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">{header}<s:Body>{body}</s:Body></s:Envelope>"#
    )
}

const DEVICE_NS: &str = "http://www.onvif.org/ver10/device/wsdl";

pub fn get_system_date_and_time() -> String {
    envelope(
        &format!(r#"<GetSystemDateAndTime xmlns="{DEVICE_NS}"/>"#),
        None,
    )
}

pub fn get_device_information(credentials: Option<&Credentials>) -> String {
    envelope(
        &format!(r#"<GetDeviceInformation xmlns="{DEVICE_NS}"/>"#),
        credentials,
    )
}

pub fn get_capabilities(credentials: Option<&Credentials>) -> String {
    envelope(
        &format!(
            r#"<GetCapabilities xmlns="{DEVICE_NS}"><Category>All</Category></GetCapabilities>"#
        ),
        credentials,
    )
}

/// The body's first element of an answer, or why there is none.
fn answer<'a>(
    doc: &'a roxmltree::Document<'a>,
    status: u16,
) -> Result<roxmltree::Node<'a, 'a>, Failure> {
    let body = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Body")
        .ok_or(Failure::Garbage)?;
    let first = body
        .children()
        .find(|n| n.is_element())
        .ok_or(Failure::Garbage)?;
    if first.tag_name().name() == "Fault" {
        // The most specific code: Subcode/Value, else Code/Value.
        let codes: Vec<&str> = first
            .descendants()
            .filter(|n| n.is_element() && n.tag_name().name() == "Value")
            .filter_map(|n| n.text())
            .map(str::trim)
            .collect();
        let code = codes.last().copied().unwrap_or("");
        if code.ends_with("NotAuthorized") || status == 401 {
            return Err(Failure::NotAuthorized);
        }
        return Err(Failure::Fault(code.chars().take(128).collect()));
    }
    Ok(first)
}

fn parse_document(text: &str, status: u16) -> Result<roxmltree::Document<'_>, Failure> {
    if status == 401 {
        return Err(Failure::NotAuthorized);
    }
    if text.len() > MAX_RESPONSE_BYTES {
        return Err(Failure::Garbage);
    }
    roxmltree::Document::parse(text).map_err(|_| Failure::Garbage)
}

fn text_of(node: roxmltree::Node, name: &str) -> String {
    node.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
        .unwrap_or("")
        .trim()
        .chars()
        .take(256)
        .collect()
}

/// Reads a GetDeviceInformationResponse.
pub fn device_information(text: &str, status: u16) -> Result<DeviceInformation, Failure> {
    let doc = parse_document(text, status)?;
    let r = answer(&doc, status)?;
    if r.tag_name().name() != "GetDeviceInformationResponse" {
        return Err(Failure::Garbage);
    }
    Ok(DeviceInformation {
        manufacturer: text_of(r, "Manufacturer"),
        model: text_of(r, "Model"),
        firmware_version: text_of(r, "FirmwareVersion"),
        serial_number: text_of(r, "SerialNumber"),
        hardware_id: text_of(r, "HardwareId"),
    })
}

/// Reads a GetCapabilitiesResponse: the media service's address, if it has one.
pub fn media_address(text: &str, status: u16) -> Result<Option<String>, Failure> {
    let doc = parse_document(text, status)?;
    let r = answer(&doc, status)?;
    if r.tag_name().name() != "GetCapabilitiesResponse" {
        return Err(Failure::Garbage);
    }
    let media = r
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Media");
    Ok(media.map(|m| text_of(m, "XAddr")).filter(|x| !x.is_empty()))
}

/// Reads a GetSystemDateAndTimeResponse: the camera's UTC time.
pub fn system_time(text: &str, status: u16) -> Result<jiff::Timestamp, Failure> {
    let doc = parse_document(text, status)?;
    let r = answer(&doc, status)?;
    let utc = r
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "UTCDateTime")
        .ok_or(Failure::Garbage)?;
    let n = |name: &str| -> Result<i64, Failure> {
        text_of(utc, name).parse().map_err(|_| Failure::Garbage)
    };
    let civil = jiff::civil::DateTime::new(
        n("Year")? as i16,
        n("Month")? as i8,
        n("Day")? as i8,
        n("Hour")? as i8,
        n("Minute")? as i8,
        n("Second")? as i8,
        0,
    )
    .map_err(|_| Failure::Garbage)?;
    civil
        .to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|_| Failure::Garbage)
}

/// A timestamp as WS-Security's `Created` (`2026-12-04T22:00:00Z`).
pub fn created(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_username_token_profiles() {
        // Username Token Profile 1.0, section 3.1, as ONVIF clients compute it: the nonce's
        // bytes, then Created and the password, hashed with SHA-1.
        let nonce = base64::engine::general_purpose::STANDARD
            .decode("LKqI6G/AikKCQrN0zqZFlg==")
            .unwrap();
        assert_eq!(
            password_digest(&nonce, "2010-09-16T07:50:45Z", "userpassword"),
            "tuOSpGlFlIXsozq4HFNeeGeFLEI="
        );
    }

    #[test]
    fn answers_and_faults_are_read() {
        let info = r#"<?xml version="1.0"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><env:Body><tds:GetDeviceInformationResponse><tds:Manufacturer>AXIS</tds:Manufacturer><tds:Model>P1346</tds:Model><tds:FirmwareVersion>5.40.9</tds:FirmwareVersion><tds:SerialNumber>00408C1836B2</tds:SerialNumber><tds:HardwareId>1C4</tds:HardwareId></tds:GetDeviceInformationResponse></env:Body></env:Envelope>"#;
        let d = device_information(info, 200).unwrap();
        assert_eq!(
            (d.manufacturer.as_str(), d.model.as_str()),
            ("AXIS", "P1346")
        );
        assert_eq!(d.serial_number, "00408C1836B2");
        let fault = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code></env:Fault></env:Body></env:Envelope>"#;
        assert_eq!(device_information(fault, 400), Err(Failure::NotAuthorized));
        assert_eq!(device_information("", 401), Err(Failure::NotAuthorized));
        assert_eq!(
            device_information("\u{0}garbage", 200),
            Err(Failure::Garbage)
        );
        let caps = r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="http://www.onvif.org/ver10/schema"><e:Body><tds:GetCapabilitiesResponse xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><tds:Capabilities><tt:Device><tt:XAddr>http://10.0.9.20/onvif/device_service</tt:XAddr></tt:Device><tt:Media><tt:XAddr>http://10.0.9.20/onvif/media_service</tt:XAddr></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse></e:Body></e:Envelope>"#;
        assert_eq!(
            media_address(caps, 200).unwrap().as_deref(),
            Some("http://10.0.9.20/onvif/media_service")
        );
        let time = r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope" xmlns:tt="http://www.onvif.org/ver10/schema"><e:Body><tds:GetSystemDateAndTimeResponse xmlns:tds="http://www.onvif.org/ver10/device/wsdl"><tds:SystemDateAndTime><tt:UTCDateTime><tt:Time><tt:Hour>7</tt:Hour><tt:Minute>50</tt:Minute><tt:Second>45</tt:Second></tt:Time><tt:Date><tt:Year>2010</tt:Year><tt:Month>9</tt:Month><tt:Day>16</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></e:Body></e:Envelope>"#;
        assert_eq!(
            created(system_time(time, 200).unwrap()),
            "2010-09-16T07:50:45Z"
        );
    }

    #[test]
    fn credentials_are_escaped_and_never_sent_in_clear() {
        let c = Credentials {
            username: "op<&>",
            password: "secret-pw",
            nonce: [7; 16],
            created: "2026-12-04T22:00:00Z".into(),
        };
        let req = get_device_information(Some(&c));
        assert!(req.contains("<Username>op&lt;&amp;&gt;</Username>"));
        assert!(!req.contains("secret-pw"));
        roxmltree::Document::parse(&req).unwrap();
    }
}
