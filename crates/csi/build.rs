//! Generates the CSI messages and services from `proto/csi.proto` with
//! protoc (server side; the client side too, for the tests that play
//! kubelet).

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["proto/csi.proto"], &["proto"])
}
