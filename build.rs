//! Generates the kubelet's device-plugin, pod-resources, plugin-registration and DRA gRPC
//! code from the vendored protos in pure Rust (protox), so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "src/deviceplugin/proto/deviceplugin-v1beta1.proto",
        "src/deviceplugin/proto/podresources-v1.proto",
        "src/dra/proto/dra-v1.proto",
        "src/dra/proto/pluginregistration-v1.proto",
    ];
    let fds = protox::compile(protos, ["src/deviceplugin/proto", "src/dra/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::deviceplugin::SmallCodec")
        .compile_fds(fds)?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
