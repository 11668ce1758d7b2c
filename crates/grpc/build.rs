//! Compiles `proto/baton/v1/*.proto` with `protox` (pure Rust, so no system `protoc`) and
//! generates the prost messages and tonic clients and servers from the descriptor set; and
//! the OTLP trace service Baton exports spans to (`proto/opentelemetry`), kept out of the
//! descriptor set reflection serves.

use std::path::{Path, PathBuf};
use std::{env, fs, io};

use protox::prost::Message as _;

const PROTO_ROOT: &str = "../../proto";
const PROTO_DIR: &str = "../../proto/baton/v1";
const OTLP_TRACE_SERVICE: &str = "opentelemetry/proto/collector/trace/v1/trace_service.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let files = proto_files(Path::new(PROTO_DIR))?;
    // With imports: reflection must serve the well-known types our files import, and prost-build
    // reads them to decide derives (it still generates only `baton.v1.rs`, since `google.protobuf`
    // maps to `prost_types`). Source info keeps proto comments as rustdoc and in reflection.
    let fds = protox::Compiler::new([PROTO_ROOT])?
        .include_source_info(true)
        .include_imports(true)
        .open_files(&files)?
        .file_descriptor_set();

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    fs::write(out_dir.join("baton_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;

    let otlp = protox::Compiler::new([PROTO_ROOT])?
        .include_imports(true)
        .open_files([OTLP_TRACE_SERVICE])?
        .file_descriptor_set();
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(otlp)?;
    Ok(())
}

/// Every `.proto` file directly in `dir`, sorted so that generation is deterministic.
fn proto_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
