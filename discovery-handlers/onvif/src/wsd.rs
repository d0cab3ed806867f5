//! WS-Discovery messages (the 2005/04 draft ONVIF devices speak, Core Specification 7.3):
//! the Probe dowser sends, and the ProbeMatches, Hello and Bye it reads. No I/O here.
//!
//! Parsing is by local name, whatever the prefixes and whichever WS-Discovery namespace a
//! device uses (the 2005/04 draft or the 1.1 standard), and bounded: a message is at most
//! [`MAX_MESSAGE_BYTES`], a device at most [`MAX_VALUES`] scopes, types and addresses.

/// Largest datagram read (WS-Discovery fits in one UDP datagram; a device that sends more is
/// not understood).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most scopes, types or addresses kept of one device.
pub const MAX_VALUES: usize = 64;

/// A device as WS-Discovery describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Match {
    /// The endpoint reference (`urn:uuid:...`): the device's stable identity.
    pub endpoint: String,
    /// Local names of its types (`NetworkVideoTransmitter`, `Device`).
    pub types: Vec<String>,
    pub scopes: Vec<String>,
    /// Its service addresses (`http://10.0.9.20/onvif/device_service`).
    pub xaddrs: Vec<String>,
}

impl Match {
    /// Whether the device says it is a camera (a NetworkVideoTransmitter, or an ONVIF device
    /// that names only its device service, as some cameras answer an NVT probe).
    pub fn is_camera(&self) -> bool {
        self.types
            .iter()
            .any(|t| t == "NetworkVideoTransmitter" || t == "Device")
    }
}

/// A WS-Discovery message dowser reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Answers to a Probe (`relates_to`: its MessageID).
    ProbeMatches {
        relates_to: String,
        matches: Vec<Match>,
    },
    Hello(Match),
    Bye {
        endpoint: String,
    },
}

/// A Probe for NetworkVideoTransmitters with this MessageID (`urn:uuid:...`).
pub fn probe(message_id: &str) -> String {
    format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" "#,
            r#"xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" "#,
            r#"xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" "#,
            r#"xmlns:dn="http://www.onvif.org/ver10/network/wsdl">"#,
            r#"<s:Header>"#,
            r#"<a:Action s:mustUnderstand="1">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>"#,
            r#"<a:MessageID>{}</a:MessageID>"#,
            r#"<a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address></a:ReplyTo>"#,
            r#"<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>"#,
            r#"</s:Header>"#,
            r#"<s:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></s:Body>"#,
            r#"</s:Envelope>"#
        ),
        crate::soap::escape(message_id)
    )
}

/// Reads a datagram; None for anything that is not a well-formed message dowser reads.
pub fn parse(bytes: &[u8]) -> Option<Message> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let body = doc
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "Body")?;
    let first = body.children().find(|n| n.is_element())?;
    match first.tag_name().name() {
        "ProbeMatches" => {
            let relates_to = doc
                .descendants()
                .find(|n| n.is_element() && n.tag_name().name() == "RelatesTo")
                .and_then(|n| n.text())
                .unwrap_or("")
                .trim()
                .to_string();
            let matches = first
                .children()
                .filter(|n| n.is_element() && n.tag_name().name() == "ProbeMatch")
                .take(MAX_VALUES)
                .filter_map(description)
                .collect();
            Some(Message::ProbeMatches {
                relates_to,
                matches,
            })
        }
        "Hello" => description(first).map(Message::Hello),
        "Bye" => Some(Message::Bye {
            endpoint: endpoint_of(first)?,
        }),
        _ => None,
    }
}

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == name)
        .and_then(|n| n.text())
}

fn endpoint_of(node: roxmltree::Node) -> Option<String> {
    let epr = node
        .children()
        .find(|n| n.is_element() && n.tag_name().name() == "EndpointReference")?;
    let address = child_text(epr, "Address")?.trim();
    (!address.is_empty() && address.len() <= 256).then(|| address.to_string())
}

fn list(node: roxmltree::Node, name: &str) -> Vec<String> {
    child_text(node, name)
        .unwrap_or("")
        .split_whitespace()
        .take(MAX_VALUES)
        .filter(|v| v.len() <= 1024)
        .map(str::to_string)
        .collect()
}

/// A ProbeMatch or Hello: endpoint, types (local names), scopes, addresses.
fn description(node: roxmltree::Node) -> Option<Match> {
    Some(Match {
        endpoint: endpoint_of(node)?,
        types: list(node, "Types")
            .into_iter()
            .map(|t| match t.rsplit_once(':') {
                Some((_, local)) => local.to_string(),
                None => t,
            })
            .collect(),
        scopes: list(node, "Scopes"),
        xaddrs: list(node, "XAddrs"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ProbeMatches as an AXIS camera sends it (prefixes and layout as captured in the
    /// ONVIF Core Specification's examples).
    const PROBE_MATCHES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl" xmlns:tds="http://www.onvif.org/ver10/device/wsdl">
<SOAP-ENV:Header><wsa:MessageID>uuid:0a6dc791-2be6-4991-9af1-454778a1917a</wsa:MessageID><wsa:RelatesTo>urn:uuid:5f5a1a3c-0000-4000-8000-000000000001</wsa:RelatesTo><wsa:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To><wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action></SOAP-ENV:Header>
<SOAP-ENV:Body><d:ProbeMatches><d:ProbeMatch>
<wsa:EndpointReference><wsa:Address>urn:uuid:a1f48ac2-dc8b-11df-b255-00408c1836b2</wsa:Address></wsa:EndpointReference>
<d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>
<d:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/location/country/sweden onvif://www.onvif.org/name/AXIS-P1346</d:Scopes>
<d:XAddrs>http://192.168.0.90/onvif/device_service http://[fe80::240:8cff:fe18:36b2]/onvif/device_service</d:XAddrs>
<d:MetadataVersion>1</d:MetadataVersion>
</d:ProbeMatch></d:ProbeMatches></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;

    #[test]
    fn a_probe_match_is_read_whatever_the_prefixes() {
        let Some(Message::ProbeMatches {
            relates_to,
            matches,
        }) = parse(PROBE_MATCHES.as_bytes())
        else {
            panic!("not read")
        };
        assert_eq!(relates_to, "urn:uuid:5f5a1a3c-0000-4000-8000-000000000001");
        assert_eq!(matches.len(), 1);
        let m = &matches[0];
        assert_eq!(m.endpoint, "urn:uuid:a1f48ac2-dc8b-11df-b255-00408c1836b2");
        assert_eq!(m.types, ["NetworkVideoTransmitter", "Device"]);
        assert!(m.is_camera());
        assert_eq!(m.scopes.len(), 3);
        assert_eq!(m.xaddrs[0], "http://192.168.0.90/onvif/device_service");
    }

    #[test]
    fn hello_and_bye_are_read_and_garbage_is_not() {
        let hello = PROBE_MATCHES
            .replace("<d:ProbeMatches><d:ProbeMatch>", "<d:Hello>")
            .replace("</d:ProbeMatch></d:ProbeMatches>", "</d:Hello>");
        assert!(matches!(parse(hello.as_bytes()), Some(Message::Hello(m)) if m.xaddrs.len() == 2));
        let bye = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"><s:Body><d:Bye><a:EndpointReference><a:Address>urn:uuid:x</a:Address></a:EndpointReference></d:Bye></s:Body></s:Envelope>"#;
        assert_eq!(
            parse(bye.as_bytes()),
            Some(Message::Bye {
                endpoint: "urn:uuid:x".into()
            })
        );
        for junk in [
            &b"\x00\xff garbage"[..],
            b"<a><b>",
            b"<s:Envelope/>",
            &vec![b'<'; MAX_MESSAGE_BYTES + 1],
        ] {
            assert_eq!(parse(junk), None);
        }
    }

    #[test]
    fn the_probe_asks_for_video_transmitters() {
        let p = probe("urn:uuid:1");
        let doc = roxmltree::Document::parse(&p).unwrap();
        let types = doc
            .descendants()
            .find(|n| n.tag_name().name() == "Types")
            .unwrap();
        assert_eq!(types.text(), Some("dn:NetworkVideoTransmitter"));
        assert_eq!(
            types.lookup_namespace_uri(Some("dn")),
            Some("http://www.onvif.org/ver10/network/wsdl")
        );
    }
}
