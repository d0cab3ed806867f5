//! `spec.discovery.udev`: any device the kernel announces, selected as udev rules would.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    FieldError, Filter,
    validation::{Rule, add_rules, list_set},
};

const UDEV_RULES: &[Rule] = &[
    Rule::new(
        "!has(self.attributes) || self.attributes.all(a, self.attributes.exists_one(o, o.name == a.name))",
        "each attribute may be filtered only once",
    )
    .at(".attributes"),
    Rule::new(
        "!has(self.parentAttributes) || self.parentAttributes.all(a, self.parentAttributes.exists_one(o, o.name == a.name))",
        "each parent attribute may be filtered only once",
    )
    .at(".parentAttributes"),
    Rule::new(
        "!has(self.properties) || self.properties.all(a, self.properties.exists_one(o, o.name == a.name))",
        "each udev property may be filtered only once",
    )
    .at(".properties"),
];

fn udev_rules(schema: &mut schemars::Schema) {
    add_rules(schema, UDEV_RULES);
}

/// Devices the kernel announces on the node with a device node (cameras, GPIO chips, input
/// devices, serial ports, USB devices...), selected by subsystem, device node, sysfs attributes, udev
/// properties and the attributes of a parent (a camera's USB vendor). Each one is local to
/// its node, and its device nodes (and their udev links) are passed to the broker container.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(transform = udev_rules)]
pub struct UdevDetails {
    /// The kernel subsystems whose devices are looked at (`video4linux`, `gpio`, `input`,
    /// `tty`, `hidraw`, `sound`, `usb`...): what `SUBSYSTEM==` matches in a udev rule.
    #[schemars(length(min = 1, max = 16), transform = list_set, inner(regex(pattern = r"^[a-z0-9][a-z0-9_.-]{0,63}$")))]
    pub subsystems: Vec<String>,
    /// Keeps devices by device node (`/dev/video[0-9]+`). Only devices with a device node
    /// are looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_nodes: Option<Filter>,
    /// Keeps devices by kernel driver (of the device or, as `DRIVERS==` does, of a parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drivers: Option<Filter>,
    /// Keeps devices by sysfs attributes of the device itself (`ATTR{name}==`): every one
    /// listed must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub attributes: Vec<ValueFilter>,
    /// Keeps devices by sysfs attributes of the device or one of its parents, the nearest
    /// that has the attribute (`ATTRS{idVendor}==`, such as a camera's USB vendor id): every
    /// one listed must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub parent_attributes: Vec<ValueFilter>,
    /// Keeps devices by udev properties (`ENV{ID_V4L_CAPABILITIES}==`, `ENV{ID_INPUT_KEYBOARD}==`):
    /// what the kernel's uevent and the udev database say. Every one listed must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub properties: Vec<ValueFilter>,
    /// How matching devices become dowser devices. `Parent` (the default): the devices kept
    /// under one parent (a USB interface, a platform device) are one device with all their
    /// device nodes, such as a camera's `/dev/video0` and `/dev/video1`. `Device`: every
    /// device kept is a device of its own.
    #[serde(default)]
    pub group_by: GroupBy,
}

/// One value of a device filtered: an attribute or property name and a filter on its
/// value. A device that does not have it passes only a filter without `include`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueFilter {
    /// The attribute (a file of the device's sysfs directory, such as `idVendor`) or the
    /// udev property (such as `ID_MODEL`).
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}$")
    )]
    pub name: String,
    /// Values to keep, as regular expressions that must match the whole value (trailing
    /// white space of sysfs files removed). Absent or empty: keep every value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub include: Vec<String>,
    /// Values to drop. Applied after `include`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 256)))]
    pub exclude: Vec<String>,
}

impl ValueFilter {
    /// The include/exclude part as a [`Filter`].
    pub fn filter(&self) -> Filter {
        Filter {
            include: self.include.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

/// How kept devices are grouped into dowser devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GroupBy {
    /// The devices under one parent are one device.
    #[default]
    Parent,
    /// Every device is a device.
    Device,
}

impl super::HandlerDetails for UdevDetails {
    fn shared(&self) -> bool {
        // A device node belongs to one node.
        false
    }
}

impl UdevDetails {
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = crate::filter::validate_all(
            path,
            &[
                ("deviceNodes", &self.device_nodes),
                ("drivers", &self.drivers),
            ],
        );
        for (list, filters) in [
            ("attributes", &self.attributes),
            ("parentAttributes", &self.parent_attributes),
            ("properties", &self.properties),
        ] {
            for (i, f) in filters.iter().enumerate() {
                errors.extend(f.filter().validate(&format!("{path}.{list}[{i}]")));
            }
        }
        errors
    }
}
