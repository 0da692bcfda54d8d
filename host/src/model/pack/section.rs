//! The custom section a packed component carries (where it came from), and
//! the LEB128 numbers the wasm binary format writes its sizes in.

use super::SECTION;

/// Appends a custom section (id 0) at the end of a component or module;
/// custom sections may appear anywhere, and engines ignore them.
pub(super) fn append_custom_section(wasm: &mut Vec<u8>, name: &str, data: &[u8]) {
    let mut contents = Vec::with_capacity(name.len() + data.len() + 5);
    leb128(&mut contents, name.len() as u64);
    contents.extend_from_slice(name.as_bytes());
    contents.extend_from_slice(data);
    wasm.push(0);
    leb128(wasm, contents.len() as u64);
    wasm.extend_from_slice(&contents);
}

fn leb128(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn read_leb128(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The provenance a packed component carries, if it was packed from ONNX:
/// the top-level custom section [`SECTION`], found by walking the sections.
pub fn provenance(wasm: &[u8]) -> Option<serde_json::Value> {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        return None;
    }
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        at += 1;
        let size = usize::try_from(read_leb128(wasm, &mut at)?).ok()?;
        let end = at.checked_add(size).filter(|&end| end <= wasm.len())?;
        if id == 0 {
            let mut name_at = at;
            let len = usize::try_from(read_leb128(wasm, &mut name_at)?).ok()?;
            let name_end = name_at.checked_add(len).filter(|&e| e <= end)?;
            if &wasm[name_at..name_end] == SECTION.as_bytes() {
                return serde_json::from_slice(&wasm[name_end..end]).ok();
            }
        }
        at = end;
    }
    None
}
