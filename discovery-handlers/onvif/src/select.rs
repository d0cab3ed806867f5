//! Which cameras are kept and what a broker gets. No I/O here.

use std::collections::BTreeMap;

use dowser_discovery_api::{CompiledFilter, Device, details::OnvifDetails, env::printable_value};

use crate::{http::split_http_url, soap::DeviceInformation, wsd::Match};

/// Longest value handed to a broker.
const MAX_VALUE_BYTES: usize = 2048;

/// The filters of a Configuration, compiled once.
#[derive(Debug, Default)]
pub struct Selection {
    scopes: CompiledFilter,
    ip_addresses: CompiledFilter,
    manufacturers: CompiledFilter,
    models: CompiledFilter,
}

impl Selection {
    pub fn new(details: &OnvifDetails) -> Result<Self, String> {
        let one = |f: &Option<dowser_discovery_api::Filter>| {
            dowser_discovery_api::compile_optional(f.as_ref()).map_err(|e| e.to_string())
        };
        Ok(Self {
            scopes: one(&details.scopes)?,
            ip_addresses: one(&details.ip_addresses)?,
            manufacturers: one(&details.manufacturers)?,
            models: one(&details.models)?,
        })
    }

    /// Whether a camera passes what WS-Discovery alone decides: a camera, a scope that
    /// passes (or no scopes and a filter without `include`), an address that passes.
    pub fn keeps_match(&self, m: &Match) -> bool {
        is_camera(m) && self.match_dropped_by(m).is_none()
    }

    /// The details' field of the first filter that leaves out a camera by its probe
    /// answer; `None` when it passes.
    pub fn match_dropped_by(&self, m: &Match) -> Option<&'static str> {
        let scope_ok = if m.scopes.is_empty() {
            self.scopes.accepts(None)
        } else {
            m.scopes.iter().any(|s| self.scopes.accepts(Some(s)))
        };
        if !scope_ok {
            Some("scopes")
        } else if !self.ip_addresses.accepts(host(m).as_deref()) {
            Some("ipAddresses")
        } else {
            None
        }
    }

    /// Whether what GetDeviceInformation said passes.
    pub fn keeps_information(&self, info: &DeviceInformation) -> bool {
        self.information_dropped_by(info).is_none()
    }

    /// The details' field of the first filter that leaves out a camera by what
    /// GetDeviceInformation said; `None` when it passes.
    pub fn information_dropped_by(&self, info: &DeviceInformation) -> Option<&'static str> {
        if !self.manufacturers.accepts(Some(&info.manufacturer)) {
            Some("manufacturers")
        } else if !self.models.accepts(Some(&info.model)) {
            Some("models")
        } else {
            None
        }
    }
}

/// Whether a probe answer is a camera dowser can describe: a network video transmitter
/// with a device service URL dowser can call.
pub fn is_camera(m: &Match) -> bool {
    m.is_camera() && host(m).is_some()
}

/// The host of the camera's first device service URL.
fn host(m: &Match) -> Option<String> {
    device_services(m)
        .first()
        .and_then(|u| split_http_url(u))
        .map(|(h, _, _)| h.to_string())
}

/// The camera's device service URLs dowser can call (`http://`), IPv4 ones first.
pub fn device_services(m: &Match) -> Vec<&str> {
    let mut urls: Vec<&str> = m
        .xaddrs
        .iter()
        .map(String::as_str)
        .filter(|u| split_http_url(u).is_some())
        .collect();
    urls.sort_by_key(|u| u.starts_with("http://["));
    urls
}

/// The device of a described camera.
pub fn device(m: &Match, service: &str, info: &DeviceInformation, media: Option<&str>) -> Device {
    let mut properties = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            properties.insert(k.to_string(), printable_value(v, MAX_VALUE_BYTES));
        }
    };
    put("ONVIF_ENDPOINT_REFERENCE", &m.endpoint);
    put("ONVIF_DEVICE_SERVICE_URL", service);
    put("ONVIF_MEDIA_SERVICE_URL", media.unwrap_or(""));
    let host = split_http_url(service)
        .map(|(h, _, _)| h)
        .unwrap_or_default();
    put("ONVIF_IP_ADDRESS", &host);
    put("ONVIF_MANUFACTURER", &info.manufacturer);
    put("ONVIF_MODEL", &info.model);
    put("ONVIF_FIRMWARE_VERSION", &info.firmware_version);
    put("ONVIF_SERIAL_NUMBER", &info.serial_number);
    put("ONVIF_HARDWARE_ID", &info.hardware_id);
    let mut scopes = m.scopes.clone();
    scopes.sort();
    put("ONVIF_SCOPES", &scopes.join(" "));
    Device {
        id: m.endpoint.clone(),
        properties,
        device_specs: Vec::new(),
        mounts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn camera() -> Match {
        Match {
            endpoint: "urn:uuid:cam-1".into(),
            types: vec!["NetworkVideoTransmitter".into()],
            scopes: vec![
                "onvif://www.onvif.org/name/Gate".into(),
                "onvif://www.onvif.org/location/line3".into(),
            ],
            xaddrs: vec![
                "http://[fe80::1]/onvif/device_service".into(),
                "https://10.0.9.20/onvif/device_service".into(),
                "http://10.0.9.20/onvif/device_service".into(),
            ],
        }
    }

    fn selection(json: serde_json::Value) -> Selection {
        Selection::new(&serde_json::from_value(json).unwrap()).unwrap()
    }

    #[test]
    fn cameras_are_kept_by_scope_and_address_and_information() {
        let m = camera();
        assert_eq!(
            device_services(&m)[0],
            "http://10.0.9.20/onvif/device_service"
        );
        assert!(
            selection(serde_json::json!({"scopes": {"include": [".*/location/line3"]}}))
                .keeps_match(&m)
        );
        assert!(
            !selection(serde_json::json!({"scopes": {"include": [".*/location/line4"]}}))
                .keeps_match(&m)
        );
        assert!(
            selection(serde_json::json!({"ipAddresses": {"include": ["10\\.0\\.9\\..*"]}}))
                .keeps_match(&m)
        );
        assert!(
            !selection(serde_json::json!({"ipAddresses": {"exclude": ["10\\.0\\.9\\..*"]}}))
                .keeps_match(&m)
        );
        let mut printer = m.clone();
        printer.types = vec!["Printer".into()];
        assert!(!selection(serde_json::json!({})).keeps_match(&printer));
        let info = DeviceInformation {
            manufacturer: "AXIS".into(),
            model: "P1346".into(),
            ..Default::default()
        };
        assert!(
            selection(serde_json::json!({"models": {"include": ["P13.*"]}}))
                .keeps_information(&info)
        );
        assert!(
            !selection(serde_json::json!({"manufacturers": {"exclude": ["AXIS"]}}))
                .keeps_information(&info)
        );
        let d = device(
            &m,
            device_services(&m)[0],
            &info,
            Some("http://10.0.9.20/onvif/media_service"),
        );
        assert_eq!(d.id, "urn:uuid:cam-1");
        assert_eq!(d.properties["ONVIF_IP_ADDRESS"], "10.0.9.20");
        assert_eq!(
            d.properties["ONVIF_SCOPES"],
            "onvif://www.onvif.org/location/line3 onvif://www.onvif.org/name/Gate"
        );
    }
}
