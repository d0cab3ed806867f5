//! The krew manifest, `deploy/krew/dowser.yaml`: a krew Plugin that installs this binary from
//! the repository's release of this version.

use std::path::Path;

fn manifest() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/krew/dowser.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).expect("the krew manifest parses")
}

#[test]
fn the_krew_manifest_installs_this_binary_from_the_release_of_this_version() {
    let m = manifest();
    assert_eq!(
        m["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(m["kind"], "Plugin");
    // krew installs it as `kubectl dowser`: the plugin's name is the binary's after `kubectl-`.
    assert_eq!(m["metadata"]["name"], "dowser");
    let spec = &m["spec"];
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(spec["version"], version.as_str());
    let repository = env!("CARGO_PKG_REPOSITORY");
    assert_eq!(spec["homepage"], repository);
    for field in ["shortDescription", "description"] {
        assert!(
            spec[field].as_str().is_some_and(|s| !s.is_empty()),
            "{field}"
        );
    }

    let platforms = spec["platforms"].as_array().expect("platforms");
    let linux = platforms
        .iter()
        .find(|p| {
            p["selector"]["matchLabels"] == serde_json::json!({"os": "linux", "arch": "amd64"})
        })
        .expect("a linux/amd64 platform");
    assert_eq!(linux["bin"], "kubectl-dowser");
    assert!(
        linux["files"]
            .as_array()
            .expect("files")
            .iter()
            .any(|f| f["from"] == "kubectl-dowser"),
        "the archive's binary is installed"
    );
    let uri = linux["uri"].as_str().expect("uri");
    assert!(
        uri.starts_with(&format!("{repository}/releases/download/{version}/")),
        "{uri}"
    );
    assert!(uri.ends_with(".tar.gz"), "{uri}");
    let sha256 = linux["sha256"].as_str().expect("sha256");
    assert_eq!(sha256.len(), 64, "{sha256}");
    assert!(sha256.bytes().all(|b| b.is_ascii_hexdigit()), "{sha256}");
}
