//! The committed CRDs are what the types generate, and they are structural schemas the API
//! server accepts.

use dowser::crd::{crd_file, crd_file_name, crds, schema::structural_problems};

fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> serde_json::Value {
    let v = &crd.spec.versions[0];
    serde_json::to_value(
        v.schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn committed_crds_equal_the_generated_ones() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    for crd in crds() {
        let path = dir.join(crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -- crds --dir crds`",
                path.display()
            )
        });
        assert!(
            committed == crd_file(&crd),
            "{} is stale: run `cargo run -- crds --dir crds` and commit the result",
            path.display()
        );
    }
}

#[test]
fn schemas_are_structural_and_fully_described() {
    for crd in crds() {
        let problems = structural_problems(&schema_of(&crd));
        assert!(
            problems.is_empty(),
            "{}:\n{}",
            crd.metadata.name.unwrap(),
            problems.join("\n")
        );
    }
}
