//! Property tests (fuzzing on the stable toolchain) for what a Modbus device sends back.
//!
//! A device on loopback answers the handler's requests with generated replies: well-formed
//! Read Device Identification responses with arbitrary objects, "more follows" loops,
//! object counts that lie, exceptions, arbitrary PDUs behind a valid MBAP header, raw
//! bytes, silence and resets. The real scan decodes them with tokio-modbus. Whatever comes
//! back: no panic, a bounded number of requests, at most the one unit asked for, and every
//! identification value printable and bounded. A well-formed answer is read back exactly.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256; the benchmark
//! command runs far more).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use dowser_discovery_api::{
    Snapshot,
    details::{
        ModbusDetails,
        modbus::{RegisterProbe, RegisterTable},
    },
    env,
};
use proptest::prelude::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Most Read Device Identification requests the handler sends to one unit.
const MAX_IDENT_REQUESTS: usize = 8;
/// Longest identification value handed to a broker, in bytes.
const MAX_VALUE_LEN: usize = 128;

/// One reply of the device to one request.
#[derive(Clone, Debug)]
enum Reply {
    /// A Read Device Identification response (0x2B/0x0E). `declared` is the object count
    /// in the header, which may disagree with the objects that follow.
    Identification {
        read_code: u8,
        conformity: u8,
        more_follows: u8,
        next_object_id: u8,
        declared: Option<u8>,
        objects: Vec<(u8, Vec<u8>)>,
    },
    /// An exception response to function 0x2B.
    Exception(u8),
    /// Any PDU behind a correct MBAP header.
    Pdu(Vec<u8>),
    /// Any bytes at all.
    Raw(Vec<u8>),
    /// No answer.
    Silent,
    /// The connection is closed.
    Close,
}

fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=255),
        "[ -~]{0,40}".prop_map(String::into_bytes),
        Just(vec![b' '; 200]),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        4 => (
            prop_oneof![Just(1u8), any::<u8>()],
            any::<u8>(),
            prop_oneof![Just(0u8), Just(0xFF), any::<u8>()],
            any::<u8>(),
            proptest::option::weighted(0.2, any::<u8>()),
            prop::collection::vec((0u8..=8, value_bytes()), 0..6),
        )
            .prop_map(|(read_code, conformity, more_follows, next_object_id, declared, objects)| {
                Reply::Identification { read_code, conformity, more_follows, next_object_id, declared, objects }
            }),
        1 => any::<u8>().prop_map(Reply::Exception),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(Reply::Pdu),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(Reply::Raw),
        1 => Just(Reply::Silent),
        1 => Just(Reply::Close),
    ]
}

impl Reply {
    /// The bytes sent for a request with transaction id `tid` to `unit`; None: close.
    fn bytes(&self, tid: [u8; 2], unit: u8) -> Option<Vec<u8>> {
        let pdu = match self {
            Reply::Identification {
                read_code,
                conformity,
                more_follows,
                next_object_id,
                declared,
                objects,
            } => {
                let mut pdu = vec![
                    0x2B,
                    0x0E,
                    *read_code,
                    *conformity,
                    *more_follows,
                    *next_object_id,
                    declared.unwrap_or(objects.len() as u8),
                ];
                for (id, value) in objects {
                    pdu.push(*id);
                    pdu.push(value.len() as u8);
                    pdu.extend_from_slice(value);
                }
                pdu
            }
            Reply::Exception(code) => vec![0xAB, *code],
            Reply::Pdu(pdu) => pdu.clone(),
            Reply::Raw(raw) => return Some(raw.clone()),
            Reply::Silent => return Some(Vec::new()),
            Reply::Close => return None,
        };
        let len = (pdu.len() + 1) as u16;
        let mut frame = vec![tid[0], tid[1], 0, 0];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.push(unit);
        frame.extend_from_slice(&pdu);
        Some(frame)
    }
}

/// A device on loopback that answers requests with `replies` in turn (then closes), over
/// every connection the handler opens. Returns its port and the count of requests.
async fn device(replies: Vec<Reply>) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let replies = replies.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                loop {
                    let mut header = [0u8; 7];
                    if stream.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let len = u16::from_be_bytes([header[4], header[5]]) as usize;
                    let mut pdu = vec![0u8; len.saturating_sub(1)];
                    if stream.read_exact(&mut pdu).await.is_err() {
                        return;
                    }
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    let Some(bytes) = replies
                        .get(n)
                        .and_then(|r| r.bytes([header[0], header[1]], header[6]))
                    else {
                        return;
                    };
                    if stream.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, requests)
}

fn scan(replies: Vec<Reply>, probe: bool) -> (Snapshot, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (port, requests) = device(replies).await;
        let details = ModbusDetails {
            targets: vec![format!("127.0.0.1:{port}")],
            unit_ids: vec!["1".into()],
            connect_timeout_ms: 500,
            request_timeout_ms: 30,
            max_connections_per_second: 100_000,
            register_probe: probe.then_some(RegisterProbe {
                table: RegisterTable::HoldingRegisters,
                address: 0,
                count: 1,
            }),
            ..ModbusDetails::default()
        };
        // Every request has a timeout; this one only turns a hang into a failure.
        let snapshot = tokio::time::timeout(Duration::from_secs(30), dowser_modbus::scan(&details))
            .await
            .expect("a scan of one unit ends");
        (snapshot, requests.load(Ordering::SeqCst))
    })
}

const OBJECT_NAMES: [&str; 7] = [
    "MODBUS_VENDOR_NAME",
    "MODBUS_PRODUCT_CODE",
    "MODBUS_REVISION",
    "MODBUS_VENDOR_URL",
    "MODBUS_PRODUCT_NAME",
    "MODBUS_MODEL_NAME",
    "MODBUS_USER_APPLICATION_NAME",
];

proptest! {
    // proptest's default: 256 cases, or PROPTEST_CASES; failures are reported, not stored.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn whatever_a_device_answers_the_scan_stays_bounded(
        replies in prop::collection::vec(reply(), 0..12),
        probe in any::<bool>(),
    ) {
        let (snapshot, requests) = scan(replies, probe);
        prop_assert!(snapshot.len() <= 1, "one unit asked, {} devices", snapshot.len());
        prop_assert!(
            requests <= MAX_IDENT_REQUESTS + usize::from(probe),
            "{requests} requests to one unit"
        );
        for device in snapshot.devices() {
            for (k, v) in &device.properties {
                prop_assert!(env::is_valid(k), "{k:?}");
                if OBJECT_NAMES.contains(&k.as_str()) {
                    prop_assert!(!v.is_empty() && v.len() <= MAX_VALUE_LEN, "{k}={v:?}");
                    prop_assert!(!v.chars().any(char::is_control), "{k}={v:?}");
                    prop_assert_eq!(v.trim(), v.as_str());
                }
            }
        }
    }

    #[test]
    fn a_well_formed_identification_is_read_back_exactly(
        vendor in "[!-~][ -~]{0,30}[!-~]",
        product in "[!-~]{1,20}",
        revision in "[0-9]{1,3}\\.[0-9]{1,3}",
        split in any::<bool>(),
    ) {
        let object = |id: u8, v: &str| (id, v.as_bytes().to_vec());
        let reply = |more_follows, next_object_id, objects| Reply::Identification {
            read_code: 1,
            conformity: 0x01,
            more_follows,
            next_object_id,
            declared: None,
            objects,
        };
        // All three objects at once, or split over two responses with "more follows".
        let replies = if split {
            vec![
                reply(0xFF, 2, vec![object(0, &vendor), object(1, &product)]),
                reply(0, 0, vec![object(2, &revision)]),
            ]
        } else {
            vec![reply(0, 0, vec![object(0, &vendor), object(1, &product), object(2, &revision)])]
        };
        let (snapshot, requests) = scan(replies, false);
        prop_assert_eq!(requests, 1 + usize::from(split));
        prop_assert_eq!(snapshot.len(), 1);
        let p = &snapshot.devices()[0].properties;
        prop_assert_eq!(&p["MODBUS_VENDOR_NAME"], &vendor);
        prop_assert_eq!(&p["MODBUS_PRODUCT_CODE"], &product);
        prop_assert_eq!(&p["MODBUS_REVISION"], &revision);
    }
}
