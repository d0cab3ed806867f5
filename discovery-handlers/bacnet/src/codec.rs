//! BACnet/IP on the wire (ANSI/ASHRAE 135, Annex J for BVLL, clause 6 for the NPDU, clauses
//! 20 and 21 for APDUs and their encoding): the Who-Is and ReadProperty requests dowser sends,
//! and the I-Am, ComplexAck and errors it reads. No I/O here; every read is bounded and a
//! datagram that does not parse is `None`, never a panic.

/// BACnet/IP's UDP port (0xBAC0).
pub const PORT: u16 = 47808;
/// Object type of a Device object.
pub const DEVICE: u16 = 8;
/// Largest instance number (2^22 - 2; 4194303 means "unconfigured").
pub const MAX_INSTANCE: u32 = 4_194_302;

/// Properties of a Device object dowser reads (clause 21, BACnetPropertyIdentifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Property {
    ObjectName = 77,
    VendorName = 121,
    VendorIdentifier = 120,
    ModelName = 70,
    FirmwareRevision = 44,
    ApplicationSoftwareVersion = 12,
    Location = 58,
    Description = 28,
}

pub const IDENTITY: [Property; 7] = [
    Property::ObjectName,
    Property::VendorName,
    Property::ModelName,
    Property::FirmwareRevision,
    Property::ApplicationSoftwareVersion,
    Property::Location,
    Property::Description,
];

/// How a datagram travelled (BVLC function, Annex J.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bvlc {
    Unicast,
    Broadcast,
    /// Distribute-Broadcast-To-Network: a BBMD spreads it on its networks.
    DistributeBroadcast,
}

/// A BACnet address behind a router: network number and MAC address (SNET/SADR).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Remote {
    pub network: u16,
    pub mac: Vec<u8>,
}

/// What dowser reads from a datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    IAm {
        instance: u32,
        vendor_id: u32,
        /// Set when the device is behind a router (the NPDU's source).
        remote: Option<Remote>,
        /// The original sender when a BBMD forwarded the datagram (Forwarded-NPDU).
        forwarded_from: Option<std::net::SocketAddrV4>,
    },
    /// A ReadProperty answer: the invoke id and the value.
    Value { invoke_id: u8, value: Value },
    /// Error, Reject or Abort for a request.
    Refused { invoke_id: u8 },
}

/// A property value, as far as dowser needs them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Unsigned(u32),
    Other,
}

impl Value {
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Text(t) => Some(t.clone()),
            Value::Unsigned(n) => Some(n.to_string()),
            Value::Other => None,
        }
    }
}

fn bvlc(function: Bvlc, npdu_apdu: &[u8]) -> Vec<u8> {
    let code = match function {
        Bvlc::Unicast => 0x0a,
        Bvlc::Broadcast => 0x0b,
        Bvlc::DistributeBroadcast => 0x09,
    };
    let len = (4 + npdu_apdu.len()) as u16;
    let mut out = vec![0x81, code, (len >> 8) as u8, len as u8];
    out.extend_from_slice(npdu_apdu);
    out
}

/// An unsigned in a context tag (clause 20.2.4).
fn context_unsigned(tag: u8, n: u32) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count().min(3);
    let value = &bytes[skip..];
    let mut out = vec![(tag << 4) | 0x08 | value.len() as u8];
    out.extend_from_slice(value);
    out
}

/// A Who-Is, global (every network: DNET 0xFFFF), for instances `low..=high` when given.
pub fn who_is(function: Bvlc, range: Option<(u32, u32)>) -> Vec<u8> {
    let mut p = vec![0x01, 0x20, 0xff, 0xff, 0x00, 0xff, 0x10, 0x08];
    if let Some((low, high)) = range {
        p.extend(context_unsigned(0, low));
        p.extend(context_unsigned(1, high));
    }
    bvlc(function, &p)
}

/// A ReadProperty of a Device object's property, confirmed (an answer is expected).
pub fn read_property(
    instance: u32,
    property: Property,
    invoke_id: u8,
    remote: Option<&Remote>,
) -> Vec<u8> {
    let mut p = vec![0x01];
    match remote {
        None => p.push(0x04),
        Some(r) => {
            // DNET/DADR to reach the device through its router; hop count 255.
            p.push(0x24);
            p.extend_from_slice(&r.network.to_be_bytes());
            p.push(r.mac.len() as u8);
            p.extend_from_slice(&r.mac);
            p.push(0xff);
        }
    }
    // Confirmed request; no segmentation; max 1476 octets; invoke id; ReadProperty (12).
    p.extend_from_slice(&[0x00, 0x05, invoke_id, 0x0c]);
    let oid = ((DEVICE as u32) << 22) | (instance & 0x3f_ffff);
    p.push(0x0c);
    p.extend_from_slice(&oid.to_be_bytes());
    p.extend(context_unsigned(1, property as u32));
    bvlc(Bvlc::Unicast, &p)
}

/// A tag: its number, whether it is a context tag, and its length/value/type field,
/// with the extended forms decoded; `at` moves past it.
struct Tag {
    number: u8,
    context: bool,
    /// Length of the content (for opening/closing tags: 6 or 7, and no content).
    length: usize,
}

fn tag(data: &[u8], at: &mut usize) -> Option<Tag> {
    let first = *data.get(*at)?;
    *at += 1;
    let mut number = first >> 4;
    if number == 0x0f {
        number = *data.get(*at)?;
        *at += 1;
    }
    let context = first & 0x08 != 0;
    let lvt = (first & 0x07) as usize;
    let length = if lvt == 5 {
        let l = *data.get(*at)? as usize;
        *at += 1;
        match l {
            254 => {
                let v = u16::from_be_bytes([*data.get(*at)?, *data.get(*at + 1)?]) as usize;
                *at += 2;
                v
            }
            255 => {
                let b = data.get(*at..*at + 4)?;
                *at += 4;
                u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
            }
            l => l,
        }
    } else {
        lvt
    };
    Some(Tag {
        number,
        context,
        length,
    })
}

fn unsigned(bytes: &[u8]) -> Option<u32> {
    if bytes.is_empty() || bytes.len() > 4 {
        return None;
    }
    Some(bytes.iter().fold(0u32, |n, b| (n << 8) | *b as u32))
}

/// An application-tagged value (clause 20.2): character strings (UTF-8, or ISO 8859-1) and
/// unsigned integers; anything else is `Other`.
fn application_value(data: &[u8], at: &mut usize) -> Option<Value> {
    let t = tag(data, at)?;
    if t.context {
        return None;
    }
    let content = data.get(*at..at.checked_add(t.length)?)?;
    *at += t.length;
    Some(match t.number {
        2 => unsigned(content)
            .map(Value::Unsigned)
            .unwrap_or(Value::Other),
        7 => {
            let (charset, text) = content.split_first()?;
            match charset {
                0 => Value::Text(String::from_utf8_lossy(text).into_owned()),
                // ISO 8859-1: every byte is the code point.
                5 => Value::Text(text.iter().map(|b| *b as char).collect()),
                _ => Value::Other,
            }
        }
        _ => Value::Other,
    })
}

/// Reads a BACnet/IP datagram.
pub fn parse(data: &[u8]) -> Option<Message> {
    if data.len() < 4 || data[0] != 0x81 {
        return None;
    }
    let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
    if declared != data.len() {
        return None;
    }
    let (mut at, forwarded_from) = match data[1] {
        0x0a | 0x0b => (4, None),
        0x04 => {
            let b = data.get(4..10)?;
            let addr = std::net::SocketAddrV4::new(
                std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                u16::from_be_bytes([b[4], b[5]]),
            );
            (10, Some(addr))
        }
        _ => return None,
    };
    // NPDU (clause 6.2).
    if *data.get(at)? != 0x01 {
        return None;
    }
    let control = *data.get(at + 1)?;
    at += 2;
    if control & 0x80 != 0 {
        return None; // a network layer message, not an APDU
    }
    if control & 0x20 != 0 {
        // DNET, DLEN, DADR (hop count comes after the source).
        at += 2;
        let dlen = *data.get(at)? as usize;
        at += 1 + dlen;
    }
    let remote = if control & 0x08 != 0 {
        let network = u16::from_be_bytes([*data.get(at)?, *data.get(at + 1)?]);
        let slen = *data.get(at + 2)? as usize;
        let mac = data.get(at + 3..at + 3 + slen)?.to_vec();
        at += 3 + slen;
        Some(Remote { network, mac })
    } else {
        None
    };
    if control & 0x20 != 0 {
        at += 1; // hop count
    }
    let apdu = data.get(at..)?;
    let kind = *apdu.first()? >> 4;
    match kind {
        // Unconfirmed request: I-Am (service 0).
        1 => {
            if *apdu.get(1)? != 0x00 {
                return None;
            }
            let mut i = 2;
            let t = tag(apdu, &mut i)?;
            if t.context || t.number != 12 || t.length != 4 {
                return None;
            }
            let b = apdu.get(i..i + 4)?;
            let oid = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            i += 4;
            if (oid >> 22) as u16 != DEVICE {
                return None;
            }
            // Max APDU length, segmentation, vendor id.
            let _max = application_value(apdu, &mut i)?;
            let t = tag(apdu, &mut i)?;
            i += t.length;
            let vendor_id = match application_value(apdu, &mut i)? {
                Value::Unsigned(v) => v,
                _ => return None,
            };
            Some(Message::IAm {
                instance: oid & 0x3f_ffff,
                vendor_id,
                remote,
                forwarded_from,
            })
        }
        // ComplexAck to ReadProperty (service 12).
        3 => {
            if apdu[0] & 0x08 != 0 {
                return None; // segmented: dowser never asks for segmentation
            }
            let invoke_id = *apdu.get(1)?;
            if *apdu.get(2)? != 0x0c {
                return None;
            }
            let mut i = 3;
            // [0] object identifier, [1] property, optional [2] array index.
            let t = tag(apdu, &mut i)?;
            i += t.length;
            let t = tag(apdu, &mut i)?;
            i += t.length;
            let mut t = tag(apdu, &mut i)?;
            if t.context && t.number == 2 {
                i += t.length;
                t = tag(apdu, &mut i)?;
            }
            // [3] opening tag, the value, [3] closing tag.
            if !(t.context && t.number == 3 && t.length == 6) {
                return None;
            }
            let value = application_value(apdu, &mut i)?;
            Some(Message::Value { invoke_id, value })
        }
        // Error (5), Reject (6), Abort (7).
        5..=7 => Some(Message::Refused {
            invoke_id: *apdu.get(1)?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An I-Am as a device sends it (clause 16.10.2; bytes as in Annex F's examples): device
    /// 1234, max APDU 1476, segmentation none (3), vendor 260.
    fn i_am(instance: u32, vendor: u16) -> Vec<u8> {
        let oid = ((DEVICE as u32) << 22) | instance;
        let mut apdu = vec![0x10, 0x00, 0xc4];
        apdu.extend_from_slice(&oid.to_be_bytes());
        apdu.extend_from_slice(&[0x22, 0x05, 0xc4, 0x91, 0x03, 0x22]);
        apdu.extend_from_slice(&vendor.to_be_bytes());
        let mut p = vec![0x01, 0x00];
        p.extend(apdu);
        bvlc(Bvlc::Broadcast, &p)
    }

    #[test]
    fn an_i_am_is_read() {
        assert_eq!(
            parse(&i_am(1234, 260)),
            Some(Message::IAm {
                instance: 1234,
                vendor_id: 260,
                remote: None,
                forwarded_from: None
            })
        );
    }

    #[test]
    fn who_is_and_read_property_are_encoded_as_the_standard_says() {
        // Global Who-Is for 100..=65535: BVLC broadcast, NPDU to DNET 0xFFFF, limits as
        // context tags 0 and 1.
        assert_eq!(
            who_is(Bvlc::Broadcast, Some((100, 65535))),
            [
                0x81, 0x0b, 0x00, 0x11, 0x01, 0x20, 0xff, 0xff, 0x00, 0xff, 0x10, 0x08, 0x09, 0x64,
                0x1a, 0xff, 0xff
            ]
        );
        // ReadProperty device,1234 vendor-name (121), invoke id 7.
        assert_eq!(
            read_property(1234, Property::VendorName, 7, None),
            [
                0x81, 0x0a, 0x00, 0x11, 0x01, 0x04, 0x00, 0x05, 0x07, 0x0c, 0x0c, 0x02, 0x00, 0x04,
                0xd2, 0x19, 0x79
            ]
        );
    }

    #[test]
    fn a_complex_ack_with_a_string_is_read() {
        let mut apdu = vec![
            0x30, 0x07, 0x0c, 0x0c, 0x02, 0x00, 0x04, 0xd2, 0x19, 0x79, 0x3e,
        ];
        let text = b"\x00ACME Controls";
        apdu.extend_from_slice(&[0x75, text.len() as u8]);
        apdu.extend_from_slice(text);
        apdu.push(0x3f);
        let mut p = vec![0x01, 0x00];
        p.extend(apdu);
        assert_eq!(
            parse(&bvlc(Bvlc::Unicast, &p)),
            Some(Message::Value {
                invoke_id: 7,
                value: Value::Text("ACME Controls".into())
            })
        );
    }

    #[test]
    fn garbage_is_not_read() {
        for junk in [
            &b""[..],
            b"\x81\x0b\x00\x04",
            b"\x81\x0b\x00\x09\x01\x00\x10\x00\xc4",
            b"\x81\x0b\xff\xff\x01\x00",
            b"\x00\x01\x02\x03\x04\x05",
            b"\x81\x0a\x00\x0a\x01\x00\x30\x01\x0c\x7f",
        ] {
            assert_eq!(parse(junk), None, "{junk:?}");
        }
    }
}
