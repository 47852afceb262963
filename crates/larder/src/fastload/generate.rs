//! Deterministic synthetic checkpoints, so that load benchmarks need no download.

use std::io::Write;
use std::path::Path;

use crate::{Error, Result};

/// Writes a safetensors file of about `bytes` bytes shaped like a transformer checkpoint:
/// blocks of f16 4096×4096 weight matrices with f32 norm vectors, then an f16 embedding that
/// makes up the rest. (f16 rather than the bf16 of most checkpoints, which is the same bytes
/// to a loader, so that `safetensors.numpy` — NumPy has no bfloat16 — can load it too.) Values are finite (|x| < 2) and a pure function of `seed` and the
/// tensor's position. Returns the number of tensors.
pub fn write_synthetic(path: &Path, bytes: u64, seed: u64) -> Result<usize> {
    const SIDE: u64 = 4096;
    let matrix = SIDE * SIDE * 2;
    let norm = SIDE * 4;
    let mut tensors: Vec<(String, &str, Vec<u64>)> = Vec::new();
    let mut total = 0u64;
    let mut block = 0;
    while total + matrix + norm <= bytes {
        tensors.push((format!("blocks.{block}.weight"), "F16", vec![SIDE, SIDE]));
        tensors.push((format!("blocks.{block}.norm"), "F32", vec![SIDE]));
        total += matrix + norm;
        block += 1;
    }
    let rest = (bytes - total) / (2 * SIDE);
    tensors.push(("embed.weight".into(), "F16", vec![rest, SIDE]));
    let mut header = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("generator".into(), "larder write_synthetic".into());
    meta.insert("seed".into(), seed.to_string().into());
    header.insert("__metadata__".into(), meta.into());
    let mut offset = 0u64;
    for (name, dtype, shape) in &tensors {
        let size = shape.iter().product::<u64>() * if *dtype == "F32" { 4 } else { 2 };
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut json = serde_json::to_vec(&header).map_err(|e| Error::InvalidArgument {
        name: "bytes",
        message: e.to_string(),
    })?;
    // Pad so that the data starts 8-byte aligned, as the reference writer does.
    json.resize(json.len().next_multiple_of(8), b' ');
    let io = |e| Error::io(path, e);
    let mut out =
        std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path).map_err(io)?);
    out.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&json).map_err(io)?;
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 8 << 20];
    for (_, dtype, shape) in &tensors {
        let size = shape.iter().product::<u64>() * if *dtype == "F32" { 4 } else { 2 };
        // Clearing the top exponent bit of every f16 / f32 keeps the values finite.
        let mask: u64 = if *dtype == "F32" {
            0xBFFF_FFFF_BFFF_FFFF
        } else {
            0xBFFF_BFFF_BFFF_BFFF
        };
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            for word in chunk[..n].chunks_exact_mut(8) {
                // xorshift64*: cheap, deterministic, good enough to defeat compression.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D) & mask;
                word.copy_from_slice(&v.to_le_bytes());
            }
            out.write_all(&chunk[..n]).map_err(io)?;
            left -= n as u64;
        }
    }
    out.flush().map_err(io)?;
    Ok(tensors.len())
}
