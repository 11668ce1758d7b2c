//! Compiles `proto/shop/v1/shop.proto`, the example gRPC services, with `protox` (no system
//! `protoc`): prost messages, tonic servers and clients, and the descriptor set that the
//! services serve by reflection or register with Baton.

use std::path::PathBuf;
use std::{env, fs};

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::Compiler::new(["proto"])?
        .include_source_info(false)
        .include_imports(true)
        .open_files(["shop/v1/shop.proto"])?
        .file_descriptor_set();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or("OUT_DIR is not set")?);
    fs::write(out_dir.join("shop_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
