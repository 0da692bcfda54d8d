//! Tensor elements between JSON and raw little-endian bytes: every datatype
//! of the contract, both ways.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use crate::contract::{Datatype, Tensor};
use crate::error::ApiError;

pub(super) struct Encoded {
    pub bytes: Vec<u8>,
    pub count: usize,
}

/// Flattens a (possibly nested) JSON array into little-endian elements.
pub(super) fn encode_elements(
    data: &Value,
    datatype: Datatype,
    name: &str,
) -> Result<Encoded, ApiError> {
    let mut out = Encoded {
        bytes: Vec::with_capacity(64 * datatype.element_size().unwrap_or(8)),
        count: 0,
    };
    encode_into(data, datatype, name, &mut out)?;
    Ok(out)
}

fn encode_into(
    value: &Value,
    datatype: Datatype,
    name: &str,
    out: &mut Encoded,
) -> Result<(), ApiError> {
    if let Value::Array(items) = value {
        for item in items {
            encode_into(item, datatype, name, out)?;
        }
        return Ok(());
    }
    let index = out.count;
    let wrong = || {
        ApiError::bad_request(format!(
            "element {index} of input {name:?} is {value}, which is not a valid {datatype}"
        ))
    };
    let b = &mut out.bytes;
    macro_rules! int {
        ($t:ty) => {{
            let v = match value {
                Value::Number(n) => n
                    .as_i64()
                    .and_then(|v| <$t>::try_from(v).ok())
                    .or_else(|| n.as_u64().and_then(|v| <$t>::try_from(v).ok())),
                _ => None,
            };
            b.extend_from_slice(&v.ok_or_else(wrong)?.to_le_bytes());
        }};
    }
    match datatype {
        Datatype::Bool => match value {
            Value::Bool(v) => b.push(*v as u8),
            _ => return Err(wrong()),
        },
        Datatype::Uint8 => int!(u8),
        Datatype::Uint16 => int!(u16),
        Datatype::Uint32 => int!(u32),
        Datatype::Uint64 => int!(u64),
        Datatype::Int8 => int!(i8),
        Datatype::Int16 => int!(i16),
        Datatype::Int32 => int!(i32),
        Datatype::Int64 => int!(i64),
        Datatype::Fp16 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            b.extend_from_slice(&f32_to_f16(v as f32).to_le_bytes());
        }
        Datatype::Fp32 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            b.extend_from_slice(&(v as f32).to_le_bytes());
        }
        Datatype::Fp64 => {
            let v = value.as_f64().ok_or_else(wrong)?;
            b.extend_from_slice(&v.to_le_bytes());
        }
        Datatype::Bytes => {
            let v = value.as_str().ok_or_else(wrong)?;
            let len = u32::try_from(v.len()).map_err(|_| wrong())?;
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(v.as_bytes());
        }
    }
    out.count += 1;
    Ok(())
}

/// Checks that a tensor the model returned holds as many elements as its shape
/// says, so that encoding it cannot read past its data.
pub fn check_output(tensor: &Tensor) -> Result<(), String> {
    let count: u64 = tensor.shape.iter().product();
    let ok = match tensor.datatype.element_size() {
        Some(size) => tensor.data.len() as u64 == count * size as u64,
        None => {
            bytes_elements(&tensor.data).count() as u64 == count
                && bytes_elements(&tensor.data).all(|e| e.is_some())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the model returned output {:?} with shape {:?} and {} bytes of {} data, which do not agree",
            tensor.name,
            tensor.shape,
            tensor.data.len(),
            tensor.datatype
        ))
    }
}

/// The number of elements a shape holds; `None` if it overflows, which no
/// real tensor does (and which must not wrap around to pass a check).
pub(super) fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Splits `BYTES` data (u32 length, then bytes, per element); `None` marks a
/// truncated element.
pub(super) fn bytes_elements(mut data: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        let Some((len, rest)) = data.split_first_chunk::<4>() else {
            data = &[];
            return Some(None);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            data = &[];
            return Some(None);
        }
        let (element, rest) = rest.split_at(len);
        data = rest;
        Some(Some(element))
    })
}

/// Serializes a tensor's elements as JSON: flat (OIP) or nested by shape
/// (`/predict`). Floats are written from their own precision, so an FP32
/// round-trips exactly without float64 noise digits.
pub struct Elements<'a> {
    pub tensor: &'a Tensor,
    pub nested: bool,
}

impl Serialize for Elements<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let t = self.tensor;
        let shape: &[u64] = if self.nested { &t.shape } else { &[] };
        let size = t.datatype.element_size();
        if let Some(size) = size {
            Chunk {
                datatype: t.datatype,
                shape,
                data: &t.data,
                size,
            }
            .serialize(serializer)
        } else {
            // BYTES is rare and variable-length: flat only.
            let mut seq = serializer.serialize_seq(None)?;
            for element in bytes_elements(&t.data).flatten() {
                seq.serialize_element(&String::from_utf8_lossy(element))?;
            }
            seq.end()
        }
    }
}

struct Chunk<'a> {
    datatype: Datatype,
    shape: &'a [u64],
    data: &'a [u8],
    size: usize,
}

impl Serialize for Chunk<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Nested: one level per dimension past the first.
        if let Some((&rows, inner)) = self.shape.split_first()
            && !inner.is_empty()
        {
            let mut seq = serializer.serialize_seq(Some(rows as usize))?;
            let row_bytes = if rows == 0 {
                0
            } else {
                self.data.len() / rows as usize
            };
            for row in 0..rows as usize {
                seq.serialize_element(&Chunk {
                    shape: inner,
                    data: &self.data[row * row_bytes..(row + 1) * row_bytes],
                    ..*self
                })?;
            }
            return seq.end();
        }
        let mut seq = serializer.serialize_seq(Some(self.data.len() / self.size))?;
        for e in self.data.chunks_exact(self.size) {
            match self.datatype {
                Datatype::Bool => seq.serialize_element(&(e[0] != 0))?,
                Datatype::Uint8 => seq.serialize_element(&e[0])?,
                Datatype::Int8 => seq.serialize_element(&(e[0] as i8))?,
                Datatype::Uint16 => seq.serialize_element(&u16::from_le_bytes([e[0], e[1]]))?,
                Datatype::Int16 => seq.serialize_element(&i16::from_le_bytes([e[0], e[1]]))?,
                Datatype::Fp16 => {
                    seq.serialize_element(&f16_to_f32(u16::from_le_bytes([e[0], e[1]])))?
                }
                Datatype::Uint32 => seq.serialize_element(&u32::from_le_bytes(arr(e)))?,
                Datatype::Int32 => seq.serialize_element(&i32::from_le_bytes(arr(e)))?,
                Datatype::Fp32 => seq.serialize_element(&f32::from_le_bytes(arr(e)))?,
                Datatype::Uint64 => seq.serialize_element(&u64::from_le_bytes(arr(e)))?,
                Datatype::Int64 => seq.serialize_element(&i64::from_le_bytes(arr(e)))?,
                Datatype::Fp64 => seq.serialize_element(&f64::from_le_bytes(arr(e)))?,
                Datatype::Bytes => unreachable!("BYTES has no fixed element size"),
            }
        }
        seq.end()
    }
}

fn arr<const N: usize>(bytes: &[u8]) -> [u8; N] {
    bytes.try_into().expect("chunk of the element size")
}

/// Rounds to nearest-even; overflow becomes infinity, as numpy does.
pub(super) fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let mantissa = bits & 0x7f_ffff;
    if exp == 0xff {
        let nan = if mantissa != 0 { 0x200 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let exp16 = exp - 127 + 15;
    if exp16 >= 0x1f {
        return sign | 0x7c00;
    }
    if exp16 <= 0 {
        if exp16 < -10 {
            return sign;
        }
        let m = mantissa | 0x80_0000;
        let shift = (14 - exp16) as u32;
        let half = 1 << (shift - 1);
        let rounded = m + half - 1 + ((m >> shift) & 1);
        return sign | (rounded >> shift) as u16;
    }
    let rounded = mantissa + 0xfff + ((mantissa >> 13) & 1);
    if rounded & 0x80_0000 != 0 {
        // The mantissa carried into the exponent.
        let exp16 = exp16 + 1;
        if exp16 >= 0x1f {
            return sign | 0x7c00;
        }
        return sign | ((exp16 as u16) << 10);
    }
    sign | ((exp16 as u16) << 10) | (rounded >> 13) as u16
}

pub(super) fn f16_to_f32(half: u16) -> f32 {
    let sign = ((half & 0x8000) as u32) << 16;
    let exp = ((half >> 10) & 0x1f) as u32;
    let mantissa = (half & 0x3ff) as u32;
    let bits = match (exp, mantissa) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: m × 2^-24.
            let magnitude = m as f32 * 2f32.powi(-24);
            return if sign == 0 { magnitude } else { -magnitude };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}
