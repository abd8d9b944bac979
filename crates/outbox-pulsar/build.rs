//! Generates the Pulsar binary protocol's types from `proto/PulsarApi.proto`
//! (Apache Pulsar's, unchanged). Needs `protoc` on the PATH or in `PROTOC`.

fn main() {
    println!("cargo:rerun-if-changed=proto/PulsarApi.proto");
    let mut config = prost_build::Config::new();
    if let Err(err) = config.compile_protos(&["proto/PulsarApi.proto"], &["proto/"]) {
        panic!(
            "could not generate the Pulsar protocol types: {err}\n\
             outbox-pulsar needs the protobuf compiler: apt-get install protobuf-compiler \
             (or set PROTOC to a protoc binary)"
        );
    }
}
