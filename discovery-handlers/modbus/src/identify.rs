//! Identification of one unit: Read Device Identification, then the register probe.

use std::{collections::BTreeMap, time::Duration};

use dowser_discovery_api::{
    CompiledFilter, Filter,
    details::{
        ModbusDetails,
        modbus::{RegisterProbe, RegisterTable},
    },
};
use tokio::time::timeout;
use tokio_modbus::{
    ExceptionCode, Slave,
    client::{Client, Context, Reader},
    prelude::SlaveContext,
};

/// Most Read Device Identification requests per unit (a device may split its objects over
/// several responses with "more follows").
const MAX_IDENT_REQUESTS: usize = 8;
/// Longest identification value kept, in bytes.
const MAX_VALUE_LEN: usize = 128;

/// What a unit told about itself (identification objects 0x00 to 0x06).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub objects: BTreeMap<u8, String>,
}

impl Identity {
    pub fn get(&self, id: u8) -> Option<&str> {
        self.objects.get(&id).map(String::as_str)
    }
    pub fn vendor_name(&self) -> Option<&str> {
        self.get(0x00)
    }
    pub fn product_code(&self) -> Option<&str> {
        self.get(0x01)
    }
    pub fn revision(&self) -> Option<&str> {
        self.get(0x02)
    }
}

/// The outcome of probing one unit.
#[derive(Debug)]
pub enum UnitOutcome {
    /// The unit is there; identification when it gave one.
    Present(Option<Identity>),
    /// The unit answered, but says it is not there (a gateway's 0x0A/0x0B), or the probe
    /// failed.
    Absent,
    /// No usable answer: the connection must not be reused. `silent` when nothing came in
    /// time; else the answer was broken (not Modbus, malformed, the connection dropped).
    Broken { silent: bool },
}

enum Answer<T> {
    Ok(T),
    Exception(ExceptionCode),
    /// Nothing usable; `true` when nothing came in time.
    Broken(bool),
}

fn is_gateway_miss(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice
    )
}

async fn call<T, F>(request_timeout: Duration, fut: F) -> Answer<T>
where
    F: std::future::Future<Output = tokio_modbus::Result<T>>,
{
    match timeout(request_timeout, fut).await {
        Ok(Ok(Ok(v))) => Answer::Ok(v),
        Ok(Ok(Err(code))) => Answer::Exception(code),
        Ok(Err(_)) => Answer::Broken(false),
        Err(_) => Answer::Broken(true),
    }
}

/// Reads the basic identification objects of `unit`, following "more follows".
async fn read_identity(ctx: &mut Context, request_timeout: Duration) -> Answer<Identity> {
    use tokio_modbus::prelude::ReadCode;
    let mut identity = Identity::default();
    let mut next = 0u8;
    for _ in 0..MAX_IDENT_REQUESTS {
        let rsp = match call(
            request_timeout,
            ctx.read_device_identification(ReadCode::Basic, next),
        )
        .await
        {
            Answer::Ok(r) => r,
            Answer::Exception(c) => return Answer::Exception(c),
            Answer::Broken(silent) => return Answer::Broken(silent),
        };
        for obj in &rsp.device_id_objects {
            identity.objects.insert(obj.id, clean(&obj.value));
        }
        // A device that keeps saying "more follows" without moving on must not loop us.
        if !rsp.more_follows || rsp.next_object_id <= next {
            break;
        }
        next = rsp.next_object_id;
    }
    identity.objects.retain(|_, v| !v.is_empty());
    Answer::Ok(identity)
}

/// Printable text of an identification value: invalid UTF-8 replaced, then made fit for an
/// environment variable by the one rule all handlers share (control characters dropped,
/// surrounding spaces trimmed, at most [`MAX_VALUE_LEN`] bytes — also when each invalid byte
/// became a three-byte replacement character).
fn clean(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_VALUE_LEN)]);
    dowser_discovery_api::env::printable_value(&s, MAX_VALUE_LEN)
}

async fn read_probe(
    ctx: &mut Context,
    probe: &RegisterProbe,
    request_timeout: Duration,
) -> Answer<()> {
    let (addr, n) = (probe.address as u16, probe.count as u16);
    match probe.table {
        RegisterTable::HoldingRegisters => {
            call(request_timeout, ctx.read_holding_registers(addr, n))
                .await
                .map()
        }
        RegisterTable::InputRegisters => call(request_timeout, ctx.read_input_registers(addr, n))
            .await
            .map(),
        RegisterTable::Coils => call(request_timeout, ctx.read_coils(addr, n)).await.map(),
        RegisterTable::DiscreteInputs => call(request_timeout, ctx.read_discrete_inputs(addr, n))
            .await
            .map(),
    }
}

impl<T> Answer<T> {
    fn map(self) -> Answer<()> {
        match self {
            Answer::Ok(_) => Answer::Ok(()),
            Answer::Exception(c) => Answer::Exception(c),
            Answer::Broken(silent) => Answer::Broken(silent),
        }
    }
}

/// Probes one unit on an open connection.
///
/// - Identification answered: present, identified.
/// - A gateway's "no such device" (0x0A/0x0B): absent.
/// - Any other exception, a broken answer or silence: the register probe decides when one is
///   configured (a normal response means present). Without a probe, a unit that answered
///   with an exception is present but unidentified, and a silent one is not there.
pub async fn probe_unit(
    ctx: &mut Context,
    unit: u8,
    probe: Option<&RegisterProbe>,
    request_timeout: Duration,
    reconnect: impl AsyncFnOnce() -> Option<Context>,
) -> UnitOutcome {
    ctx.set_slave(Slave(unit));
    let first = read_identity(ctx, request_timeout).await;
    let mut broken = false;
    match first {
        Answer::Ok(identity) => return UnitOutcome::Present(Some(identity)),
        Answer::Exception(c) if is_gateway_miss(c) => return UnitOutcome::Absent,
        Answer::Exception(_) if probe.is_none() => return UnitOutcome::Present(None),
        Answer::Exception(_) => {}
        Answer::Broken(silent) if probe.is_none() => return UnitOutcome::Broken { silent },
        Answer::Broken(_) => broken = true,
    }
    let probe = probe.expect("handled above");
    if broken {
        // A late reply to the identification request must not be read as the probe's answer:
        // close this connection (or serial line, opened exclusively) and open a new one.
        let _ = ctx.disconnect().await;
        match reconnect().await {
            Some(fresh) => *ctx = fresh,
            None => return UnitOutcome::Broken { silent: true },
        }
        ctx.set_slave(Slave(unit));
    }
    match read_probe(ctx, probe, request_timeout).await {
        Answer::Ok(()) => UnitOutcome::Present(None),
        Answer::Exception(_) => UnitOutcome::Absent,
        Answer::Broken(silent) => UnitOutcome::Broken { silent },
    }
}

/// The vendor, product code and revision filters of the details, compiled once per scan.
pub(crate) struct IdentityFilter {
    vendor: CompiledFilter,
    product: CompiledFilter,
    revision: CompiledFilter,
}

impl IdentityFilter {
    pub(crate) fn new(details: &ModbusDetails) -> Self {
        Self {
            vendor: compile(&details.vendor_names),
            product: compile(&details.product_codes),
            revision: compile(&details.revisions),
        }
    }

    /// The details' field of the first filter that leaves the identity out; `None` when
    /// every filter keeps it.
    pub(crate) fn dropped_by(&self, identity: &Identity) -> Option<&'static str> {
        if !self.vendor.accepts(identity.vendor_name()) {
            Some("vendorNames")
        } else if !self.product.accepts(identity.product_code()) {
            Some("productCodes")
        } else if !self.revision.accepts(identity.revision()) {
            Some("revisions")
        } else {
            None
        }
    }
}

fn compile(filter: &Option<Filter>) -> CompiledFilter {
    // Details were validated before a scan starts; an invalid pattern cannot get here.
    filter
        .as_ref()
        .and_then(|f| f.compile().ok())
        .unwrap_or_default()
}

/// Environment names of identification objects 0x00–0x06 (Modbus Application Protocol
/// 1.1b3, 6.21).
const OBJECT_NAMES: [(u8, &str); 7] = [
    (0x00, "MODBUS_VENDOR_NAME"),
    (0x01, "MODBUS_PRODUCT_CODE"),
    (0x02, "MODBUS_REVISION"),
    (0x03, "MODBUS_VENDOR_URL"),
    (0x04, "MODBUS_PRODUCT_NAME"),
    (0x05, "MODBUS_MODEL_NAME"),
    (0x06, "MODBUS_USER_APPLICATION_NAME"),
];

/// Adds the identification objects a unit gave to a device's properties.
pub(crate) fn add_identity(identity: &Identity, properties: &mut BTreeMap<String, String>) {
    for (id, name) in OBJECT_NAMES {
        if let Some(v) = identity.get(id) {
            properties.insert(name.to_string(), v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identification_values_are_cleaned() {
        assert_eq!(clean(b"  Acme\0\0"), "Acme");
        assert_eq!(clean(b"A\x01c\x7fme"), "Acme");
        assert_eq!(clean(&[0xff, b'x']), "\u{fffd}x");
        assert_eq!(clean(&[b'a'; 500]).len(), MAX_VALUE_LEN);
        // Found by the long property run: invalid bytes grow threefold when replaced.
        let garbage = clean(&[0x80; 100]);
        assert!(garbage.len() <= MAX_VALUE_LEN, "{} bytes", garbage.len());
        assert!(garbage.starts_with('\u{fffd}'));
    }
}
