//! Generates the model's weights: W, 1024 × 4096 little-endian f32 (16 MiB),
//! deterministic pseudo-random values from a xorshift32, written to OUT_DIR
//! so that nothing but code is committed.

use std::io::Write;
use std::path::PathBuf;

/// Must agree with `INPUTS` and `OUTPUTS` in src/lib.rs.
const INPUTS: usize = 1024;
const OUTPUTS: usize = 4096;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let path =
        PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("weights.bin");
    let mut state: u32 = 0x9E37_79B9;
    let mut bytes = Vec::with_capacity(INPUTS * OUTPUTS * 4);
    for _ in 0..INPUTS * OUTPUTS {
        // xorshift32 (Marsaglia 2003): never zero for a non-zero seed.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // The top 24 bits as a uniform value in [-1, 1), scaled down so that
        // y = x·W stays near unit size for inputs in 0..1.
        let uniform = (state >> 8) as f32 / (1 << 23) as f32 - 1.0;
        bytes.extend_from_slice(&(uniform / 32.0).to_le_bytes());
    }
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(&bytes))
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
}
