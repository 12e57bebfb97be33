//! `runner-codegen PROTO OUT`: compiles the protobuf schema `PROTO` with
//! protox (a protobuf compiler in Rust, so no `protoc` is needed) and writes
//! the prost types of its one package to `OUT`.
//!
//! Run through `tools/codegen/regenerate-onnx-proto.sh`, which names the
//! inputs; the output is deterministic for a given `Cargo.lock` here.

use std::error::Error;
use std::path::Path;

/// Lines put above prost-build's own `@generated` marker.
const HEADER: &str = "\
// ONNX's protobuf messages, compiled from onnx.proto3 (beside this file) by
// tools/codegen/regenerate-onnx-proto.sh: protox and prost-build, no protoc.
// Do not edit by hand; rerun the script.
";

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [proto, out] = args.as_slice() else {
        return Err("usage: runner-codegen PROTO OUT".into());
    };
    let proto = Path::new(proto);
    let (Some(dir), Some(file)) = (proto.parent(), proto.file_name()) else {
        return Err(format!("{}: not a file path", proto.display()).into());
    };
    let descriptors = protox::compile([file], [dir])?;
    let package = match descriptors.file.as_slice() {
        [one] => one.package().to_string(),
        files => return Err(format!("expected one file descriptor, got {}", files.len()).into()),
    };

    // prost-build writes `<package>.rs` into a directory: a scratch one here.
    let scratch = std::env::temp_dir().join(format!("runner-codegen-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let generated = prost_build::Config::new()
        .out_dir(&scratch)
        .compile_fds(descriptors)
        .and_then(|()| std::fs::read_to_string(scratch.join(format!("{package}.rs"))));
    std::fs::remove_dir_all(&scratch)?;
    std::fs::write(out, format!("{HEADER}{}", generated?))?;
    eprintln!("wrote {out} (package `{package}`)");
    Ok(())
}
