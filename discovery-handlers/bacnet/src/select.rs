//! Which devices are kept and what a broker gets. No I/O here.

use std::{collections::BTreeMap, net::SocketAddrV4};

use dowser_discovery_api::{CompiledFilter, Device, details::BacnetDetails, env::printable_value};

use crate::codec::{Property, Remote};

/// Longest value handed to a broker.
const MAX_VALUE_BYTES: usize = 1024;

/// A device that answered Who-Is, with what ReadProperty told of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub instance: u32,
    pub vendor_id: u32,
    /// Where its answers come from (its router's when it is behind one).
    pub address: Option<SocketAddrV4>,
    pub remote: Option<Remote>,
    /// The identity properties it answered.
    pub identity: BTreeMap<Property, String>,
}

/// The filters of a Configuration, compiled once.
#[derive(Debug, Default)]
pub struct Selection {
    vendor_ids: Vec<u32>,
    range: Option<(u32, u32)>,
    vendor_names: CompiledFilter,
    model_names: CompiledFilter,
    object_names: CompiledFilter,
    locations: CompiledFilter,
}

impl Selection {
    pub fn new(details: &BacnetDetails) -> Result<Self, String> {
        let one = |f: &Option<dowser_discovery_api::Filter>| {
            dowser_discovery_api::compile_optional(f.as_ref()).map_err(|e| e.to_string())
        };
        Ok(Self {
            vendor_ids: details.vendor_ids.clone(),
            range: details.instance_range.map(|r| (r.low, r.high)),
            vendor_names: one(&details.vendor_names)?,
            model_names: one(&details.model_names)?,
            object_names: one(&details.object_names)?,
            locations: one(&details.locations)?,
        })
    }

    /// Whether what I-Am says passes (devices outside the range that answered anyway, as
    /// some answer every Who-Is, are left out here).
    pub fn keeps_i_am(&self, instance: u32, vendor_id: u32) -> bool {
        self.i_am_dropped_by(instance, vendor_id).is_none()
    }

    /// The details' field that leaves out a device by its I-Am; `None` when it passes.
    pub fn i_am_dropped_by(&self, instance: u32, vendor_id: u32) -> Option<&'static str> {
        if !self
            .range
            .is_none_or(|(lo, hi)| (lo..=hi).contains(&instance))
        {
            Some("instanceRange")
        } else if !(self.vendor_ids.is_empty() || self.vendor_ids.contains(&vendor_id)) {
            Some("vendorIds")
        } else {
            None
        }
    }

    /// Whether the identity read passes.
    pub fn keeps_identity(&self, f: &Found) -> bool {
        self.identity_dropped_by(f).is_none()
    }

    /// The details' field of the first filter that leaves out a device by the identity
    /// read; `None` when it passes.
    pub fn identity_dropped_by(&self, f: &Found) -> Option<&'static str> {
        let get = |p| f.identity.get(&p).map(String::as_str);
        [
            ("vendorNames", &self.vendor_names, Property::VendorName),
            ("modelNames", &self.model_names, Property::ModelName),
            ("objectNames", &self.object_names, Property::ObjectName),
            ("locations", &self.locations, Property::Location),
        ]
        .into_iter()
        .find(|(_, filter, property)| !filter.accepts(get(*property)))
        .map(|(field, _, _)| field)
    }
}

/// The device of a kept BACnet device.
pub fn device(f: &Found) -> Device {
    let mut properties = BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        if !v.is_empty() {
            properties.insert(k.to_string(), printable_value(v, MAX_VALUE_BYTES));
        }
    };
    put("BACNET_DEVICE_INSTANCE", &f.instance.to_string());
    put("BACNET_VENDOR_ID", &f.vendor_id.to_string());
    if let Some(a) = f.address {
        put("BACNET_ADDRESS", &a.to_string());
    }
    if let Some(r) = &f.remote {
        put("BACNET_NETWORK", &r.network.to_string());
        let mac: Vec<String> = r.mac.iter().map(|b| format!("{b:02x}")).collect();
        put("BACNET_MAC", &mac.join(":"));
    }
    for (p, key) in [
        (Property::ObjectName, "BACNET_OBJECT_NAME"),
        (Property::VendorName, "BACNET_VENDOR_NAME"),
        (Property::ModelName, "BACNET_MODEL_NAME"),
        (Property::FirmwareRevision, "BACNET_FIRMWARE_REVISION"),
        (
            Property::ApplicationSoftwareVersion,
            "BACNET_APPLICATION_SOFTWARE_VERSION",
        ),
        (Property::Location, "BACNET_LOCATION"),
        (Property::Description, "BACNET_DESCRIPTION"),
    ] {
        put(key, f.identity.get(&p).map(String::as_str).unwrap_or(""));
    }
    Device {
        id: format!("bacnet://{}", f.instance),
        properties,
        device_specs: Vec::new(),
        mounts: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(json: serde_json::Value) -> Selection {
        Selection::new(&serde_json::from_value(json).unwrap()).unwrap()
    }

    #[test]
    fn devices_are_kept_by_i_am_and_identity() {
        let s = selection(
            serde_json::json!({"instanceRange": {"low": 100, "high": 199}, "vendorIds": [5]}),
        );
        assert!(s.keeps_i_am(150, 5));
        assert!(!s.keeps_i_am(250, 5));
        assert!(!s.keeps_i_am(150, 7));
        let f = Found {
            instance: 150,
            vendor_id: 5,
            address: Some("10.0.7.5:47808".parse().unwrap()),
            remote: Some(Remote {
                network: 7,
                mac: vec![0x0a],
            }),
            identity: [
                (Property::VendorName, "Johnson Controls".to_string()),
                (Property::ModelName, "FEC2611".to_string()),
            ]
            .into(),
        };
        assert!(
            selection(serde_json::json!({"modelNames": {"include": ["FEC.*"]}})).keeps_identity(&f)
        );
        assert!(
            !selection(serde_json::json!({"vendorNames": {"exclude": ["Johnson.*"]}}))
                .keeps_identity(&f)
        );
        assert!(
            !selection(serde_json::json!({"locations": {"include": [".*"]}})).keeps_identity(&f)
        );
        let d = device(&f);
        assert_eq!(d.id, "bacnet://150");
        assert_eq!(d.properties["BACNET_ADDRESS"], "10.0.7.5:47808");
        assert_eq!(d.properties["BACNET_MAC"], "0a");
        assert_eq!(d.properties["BACNET_MODEL_NAME"], "FEC2611");
    }
}
