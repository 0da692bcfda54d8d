//! Tensor elements between JSON and raw little-endian bytes: every datatype
//! of the contract, both ways.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::Value;

use crate::core::error::Error;
use crate::runtime::contract::{Datatype, Tensor};

pub(super) struct Encoded {
    pub bytes: Vec<u8>,
    pub count: usize,
}

/// Flattens a (possibly nested) JSON array into little-endian elements.
pub(super) fn encode_elements(
    data: &Value,
    datatype: Datatype,
    name: &str,
) -> Result<Encoded, Error> {
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
) -> Result<(), Error> {
    if let Value::Array(items) = value {
        for item in items {
            encode_into(item, datatype, name, out)?;
        }
        return Ok(());
    }
    let index = out.count;
    let wrong = || {
        Error::bad_input(format!(
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
            let half = f32_to_f16(float(value).ok_or_else(wrong)? as f32);
            if f16_to_f32(half).is_infinite() && value.is_number() {
                return Err(out_of_range(index, name, value, datatype));
            }
            b.extend_from_slice(&half.to_le_bytes());
        }
        Datatype::Fp32 => {
            let v = float(value).ok_or_else(wrong)? as f32;
            if v.is_infinite() && value.is_number() {
                return Err(out_of_range(index, name, value, datatype));
            }
            b.extend_from_slice(&v.to_le_bytes());
        }
        Datatype::Fp64 => {
            let v = float(value).ok_or_else(wrong)?;
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

/// How JSON carries the floats it has no number for. JSON numbers cannot be
/// NaN or infinite, so these travel as strings (as in protobuf's JSON
/// mapping), both ways; numpy reads them with a float dtype, and binary
/// tensor data carries them exactly.
pub const NAN: &str = "NaN";
pub const INFINITY: &str = "Infinity";
pub const NEG_INFINITY: &str = "-Infinity";

/// A float element: a JSON number, or one of the non-finite strings.
fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if s == NAN => Some(f64::NAN),
        Value::String(s) if s == INFINITY => Some(f64::INFINITY),
        Value::String(s) if s == NEG_INFINITY => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

fn out_of_range(index: usize, name: &str, value: &Value, datatype: Datatype) -> Error {
    let max = match datatype {
        Datatype::Fp16 => "65504",
        _ => "3.4028235e38",
    };
    Error::bad_input(format!(
        "element {index} of input {name:?} is {value}, outside {datatype}'s range (±{max}); \
         send a smaller value, or \"Infinity\" if you mean it"
    ))
}

/// Checks that a tensor's data holds exactly the elements its shape says,
/// in checked arithmetic (a shape of 2^63 × 2 must not wrap around to match
/// empty data), and that `BYTES` elements are whole. Encoding a tensor that
/// passes cannot read past its data.
pub fn check_data(name: &str, tensor: &Tensor) -> Result<(), String> {
    let what = || {
        format!(
            "output {name:?} has shape {:?} but {} bytes of {} data",
            tensor.shape,
            tensor.data.len(),
            tensor.datatype
        )
    };
    let Some(count) = element_count(&tensor.shape) else {
        return Err(format!(
            "{}: the shape holds more than 2^64 elements",
            what()
        ));
    };
    match tensor.datatype.element_size() {
        Some(size) => {
            if count.checked_mul(size as u64) != Some(tensor.data.len() as u64) {
                return Err(format!("{}, which do not agree", what()));
            }
        }
        None => {
            let mut elements = 0u64;
            for element in bytes_elements(&tensor.data) {
                if element.is_none() {
                    return Err(format!("{}: a BYTES element is truncated", what()));
                }
                elements += 1;
            }
            if elements != count {
                return Err(format!(
                    "{}: {elements} BYTES elements, which do not agree",
                    what()
                ));
            }
        }
    }
    Ok(())
}

/// The fewest bytes a tensor's JSON can take: one character and a comma per
/// element (three for a BYTES string), and `[],` for every array a nested
/// encoding opens. Saturates rather than wraps. Lets an encoder refuse a
/// response that would pass its size limit before writing any of it: a shape
/// of 10^8 empty rows holds no data but nests into 300 MB of `[],`.
pub fn json_size_floor(tensor: &Tensor, nested: bool) -> u64 {
    let per_element = if tensor.datatype == Datatype::Bytes {
        3
    } else {
        2
    };
    let elements = element_count(&tensor.shape).unwrap_or(u64::MAX);
    let mut arrays = 1u64;
    if nested && tensor.shape.len() > 1 {
        let mut rows = 1u64;
        for &d in &tensor.shape[..tensor.shape.len() - 1] {
            rows = rows.saturating_mul(d);
            arrays = arrays.saturating_add(rows);
        }
    }
    elements
        .saturating_mul(per_element)
        .saturating_add(arrays.saturating_mul(3))
}

/// The number of elements a shape holds; `None` if it overflows, which no
/// real tensor does (and which must not wrap around to pass a check).
pub fn element_count(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
}

/// Splits `BYTES` data (u32 length, then bytes, per element); `None` marks a
/// truncated element.
pub fn bytes_elements(mut data: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
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
                Datatype::Fp16 => float32(&mut seq, f16_to_f32(u16::from_le_bytes([e[0], e[1]])))?,
                Datatype::Uint32 => seq.serialize_element(&u32::from_le_bytes(arr(e)))?,
                Datatype::Int32 => seq.serialize_element(&i32::from_le_bytes(arr(e)))?,
                Datatype::Fp32 => float32(&mut seq, f32::from_le_bytes(arr(e)))?,
                Datatype::Uint64 => seq.serialize_element(&u64::from_le_bytes(arr(e)))?,
                Datatype::Int64 => seq.serialize_element(&i64::from_le_bytes(arr(e)))?,
                Datatype::Fp64 => {
                    let v = f64::from_le_bytes(arr(e));
                    match non_finite(v) {
                        None => seq.serialize_element(&v)?,
                        Some(name) => seq.serialize_element(name)?,
                    }
                }
                Datatype::Bytes => unreachable!("BYTES has no fixed element size"),
            }
        }
        seq.end()
    }
}

/// An FP16 or FP32 element, written from its own precision so that it
/// round-trips without float64 noise digits.
fn float32<S: SerializeSeq>(seq: &mut S, v: f32) -> Result<(), S::Error> {
    match non_finite(v as f64) {
        None => seq.serialize_element(&v),
        Some(name) => seq.serialize_element(name),
    }
}

/// The string JSON carries for a float it has no number for.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some(NAN)
    } else if v == f64::INFINITY {
        Some(INFINITY)
    } else if v == f64::NEG_INFINITY {
        Some(NEG_INFINITY)
    } else {
        None
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
