//! The guest side of wasm-host: everything a model author needs to turn a Rust
//! type into a model component, so that a model crate is its math plus a few
//! dozen lines.
//!
//! The bindings for `wit/model.wit` are generated here once, rather than in
//! every model, so that all models agree on one version of the contract and
//! none of them has to know about `wit-bindgen`. A model implements [`Model`]
//! and exports it:
//!
//! ```ignore
//! use wasm_host_guest::{Datatype, Error, Metadata, Model, Tensor, TensorSpec};
//!
//! struct Double;
//!
//! impl Model for Double {
//!     fn metadata() -> Metadata {
//!         Metadata {
//!             name: "double".into(),
//!             version: "1".into(),
//!             inputs: vec![TensorSpec::new("x", Datatype::Fp32, &[-1])],
//!             outputs: vec![TensorSpec::new("y", Datatype::Fp32, &[-1])],
//!         }
//!     }
//!
//!     fn predict(
//!         inputs: Vec<Tensor>,
//!         _parameters: Option<Vec<(String, String)>>,
//!     ) -> Result<Vec<Tensor>, Error> {
//!         let [x] = wasm_host_guest::inputs(inputs)?;
//!         let y: Vec<f32> = x.to_f32()?.iter().map(|v| v * 2.0).collect();
//!         Ok(vec![Tensor::from_f32(vec![y.len() as u64], &y)])
//!     }
//! }
//!
//! wasm_host_guest::export_model!(Double);
//! ```
//!
//! Tensors carry no names: the host passes every declared input, in the
//! order `metadata()` declares them, and reads the outputs the same way,
//! output i as the one declared i-th. `parameters` is `None` when the request
//! has none the host passes on; [`parameter`] reads one either way.
//!
//! The crate also builds for the host platform (the export functions are then
//! ordinary symbols nobody calls), so models can share code with native tools
//! and tests without a `cfg` on every import.

// Sound only where a component runs one call at a time on one thread:
// installed on wasm32 only, and built natively for its tests.
#[cfg(any(all(target_arch = "wasm32", feature = "call-allocator"), test))]
mod alloc;

#[cfg(all(target_arch = "wasm32", feature = "call-allocator"))]
#[global_allocator]
static ALLOCATOR: alloc::CallAllocator = alloc::CallAllocator::new();

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "predictor",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_model",
        // The macro expands in the model's crate, which knows this crate by
        // name but has no bindings of its own.
        default_bindings_module: "wasm_host_guest::bindings",
    });
}

/// What a model implements: `metadata()` once per instance, `predict()` per
/// request. Both are associated functions, without `self`, because the host
/// owns instance lifetime; state that must outlive a call lives in a `static`
/// (for example a `std::sync::OnceLock`).
pub use bindings::exports::wasm_host::model::model::Guest as Model;
pub use bindings::wasm_host::model::types::{Datatype, Error, Metadata, Tensor, TensorSpec};

/// Exports a type implementing [`Model`] as the component's `model` interface:
/// `wasm_host_guest::export_model!(MyModel);`, once per crate, at any module
/// level.
pub use bindings::export_model;

use std::fmt;

impl Datatype {
    /// The Open Inference Protocol's name for the type, so that error
    /// messages use the words clients see in requests ("FP32", not "Fp32").
    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Bytes per element, or `None` for `BYTES`, whose elements are
    /// length-prefixed and so have no fixed size.
    pub fn size(self) -> Option<usize> {
        match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => Some(1),
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => Some(2),
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => Some(4),
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => Some(8),
            Datatype::Bytes => None,
        }
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Error {
    /// Shorthand for the common "reject this request" case (HTTP 400).
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// Shorthand for "the model itself failed" (HTTP 500). Prefer this to a
    /// panic: a panic traps, and the host then throws the instance away.
    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }
}

impl TensorSpec {
    /// A spec in one line, since metadata is mostly a list of these. `-1` in
    /// `shape` accepts any size in that dimension.
    pub fn new(name: impl Into<String>, datatype: Datatype, shape: &[i64]) -> Self {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }
}

/// The inputs as an array of as many as the model declares, to destructure
/// in the order `metadata()` declares them: `let [x, mask] = inputs(inputs)?;`.
/// The host always passes every declared input, so the count only disagrees
/// if `metadata()` and the destructuring do, which this reports as
/// `invalid-input` rather than a panic.
pub fn inputs<const N: usize>(inputs: Vec<Tensor>) -> Result<[Tensor; N], Error> {
    let given = inputs.len();
    inputs.try_into().map_err(|_| {
        Error::InvalidInput(format!(
            "expected {N} inputs, in the order metadata() declares them, got {given}"
        ))
    })
}

/// The value of the request parameter `name` (JSON text, or a string's bare
/// text), if the request has it. `parameters` is `None` when the request has
/// no parameters the host passes on.
pub fn parameter<'a>(parameters: &'a Option<Vec<(String, String)>>, name: &str) -> Option<&'a str> {
    parameters
        .iter()
        .flatten()
        .find(|(n, _)| n == name)
        .map(|(_, value)| value.as_str())
}

impl Tensor {
    /// The number of elements the shape describes (1 for a scalar's empty
    /// shape), or `None` if the product overflows, which no real tensor can.
    pub fn element_count(&self) -> Option<u64> {
        self.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d))
    }

    /// Checks that this tensor holds `datatype` and that its data length
    /// matches its shape, before any decoding. The host validates requests
    /// already; checking again keeps a model from trusting a host bug into a
    /// panic or a silently truncated read. The typed reads (`to_f32`, ...)
    /// call it; a model that passes a tensor through without reading it
    /// calls it itself.
    pub fn check(&self, datatype: Datatype) -> Result<(), Error> {
        if self.datatype != datatype {
            return Err(Error::InvalidInput(format!(
                "expected a tensor of {datatype}, got one of {}",
                self.datatype
            )));
        }
        let size = datatype.size().unwrap_or(1) as u64;
        let needed = self.element_count().and_then(|n| n.checked_mul(size));
        if needed != Some(self.data.len() as u64) {
            return Err(Error::InvalidInput(format!(
                "a tensor of {datatype} with shape {:?} does not match its {} bytes of data",
                self.shape,
                self.data.len()
            )));
        }
        Ok(())
    }
}

/// Typed reads and constructors, one pair per fixed-size numeric type.
///
/// Reads copy the bytes into a new, aligned vector: they arrive as a
/// `list<u8>`, which the canonical ABI only aligns to 1, so reinterpreting
/// them in place would be undefined behaviour on an unlucky allocation. On a
/// little-endian target (wasm32 always is) both directions are one `memcpy`,
/// which the guest's call boundary measured cheaper than converting element by
/// element; elsewhere they convert with `from_le_bytes` / `to_le_bytes`.
macro_rules! typed {
    ($($ty:ty, $datatype:ident, $to:ident, $from:ident;)*) => {
        impl Tensor {
            $(
                #[doc = concat!(
                    "Decodes the elements as `", stringify!($ty), "`, or fails with ",
                    "`Error::InvalidInput` if the tensor is not `", stringify!($datatype),
                    "` or its data does not match its shape."
                )]
                pub fn $to(&self) -> Result<Vec<$ty>, Error> {
                    self.check(Datatype::$datatype)?;
                    if cfg!(target_endian = "little") {
                        let count = self.data.len() / size_of::<$ty>();
                        let mut values = Vec::<$ty>::with_capacity(count);
                        // SAFETY: `check` made the length a whole number of
                        // elements, the vector has room for them, every bit
                        // pattern is a valid number, and the byte order is
                        // the target's.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                self.data.as_ptr(),
                                values.as_mut_ptr().cast::<u8>(),
                                count * size_of::<$ty>(),
                            );
                            values.set_len(count);
                        }
                        return Ok(values);
                    }
                    Ok(self
                        .data
                        .chunks_exact(size_of::<$ty>())
                        .map(|b| <$ty>::from_le_bytes(b.try_into().unwrap()))
                        .collect())
                }

                #[doc = concat!(
                    "Builds a `", stringify!($datatype), "` tensor. The host checks ",
                    "outputs against `metadata()`, so a shape that disagrees with ",
                    "`values` is reported there rather than here."
                )]
                pub fn $from(shape: Vec<u64>, values: &[$ty]) -> Tensor {
                    let data = if cfg!(target_endian = "little") {
                        // SAFETY: the bytes of a slice of numbers, read as
                        // bytes, within its length.
                        unsafe {
                            std::slice::from_raw_parts(
                                values.as_ptr().cast::<u8>(),
                                size_of_val(values),
                            )
                        }
                        .to_vec()
                    } else {
                        let mut data = Vec::with_capacity(values.len() * size_of::<$ty>());
                        for v in values {
                            data.extend_from_slice(&v.to_le_bytes());
                        }
                        data
                    };
                    Tensor {
                        datatype: Datatype::$datatype,
                        shape,
                        data,
                    }
                }
            )*
        }
    };
}

typed! {
    u8, Uint8, to_u8, from_u8;
    u16, Uint16, to_u16, from_u16;
    u32, Uint32, to_u32, from_u32;
    u64, Uint64, to_u64, from_u64;
    i8, Int8, to_i8, from_i8;
    i16, Int16, to_i16, from_i16;
    i32, Int32, to_i32, from_i32;
    i64, Int64, to_i64, from_i64;
    f32, Fp32, to_f32, from_f32;
    f64, Fp64, to_f64, from_f64;
}

impl Tensor {
    /// Decodes a `BOOL` tensor. Any non-zero byte is `true`, as numpy reads
    /// them, rather than rejecting values other than 0 and 1.
    pub fn to_bool(&self) -> Result<Vec<bool>, Error> {
        self.check(Datatype::Bool)?;
        Ok(self.data.iter().map(|&b| b != 0).collect())
    }

    /// Builds a `BOOL` tensor, one byte per element.
    pub fn from_bool(shape: Vec<u64>, values: &[bool]) -> Tensor {
        Tensor {
            datatype: Datatype::Bool,
            shape,
            data: values.iter().map(|&b| u8::from(b)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks() {
        let t = Tensor::from_f32(vec![2, 2], &[1.0, -2.5, 3.25, f32::MAX]);
        assert_eq!(t.to_f32().unwrap(), [1.0, -2.5, 3.25, f32::MAX]);
        assert!(
            matches!(t.to_i32(), Err(Error::InvalidInput(m)) if m.contains("expected a tensor of INT32, got one of FP32"))
        );

        let t = Tensor::from_i64(vec![3], &[-1, 0, i64::MAX]);
        assert_eq!(t.to_i64().unwrap(), [-1, 0, i64::MAX]);

        let mut short = t.clone();
        short.data.pop();
        assert!(short.to_i64().is_err());

        let scalar = Tensor::from_bool(vec![], &[true]);
        assert_eq!(scalar.to_bool().unwrap(), [true]);
    }

    #[test]
    fn inputs_destructure_in_declared_order_or_fail_as_invalid_input() {
        let given = vec![
            Tensor::from_u8(vec![1], &[1]),
            Tensor::from_u8(vec![1], &[2]),
        ];
        let [a, b] = inputs(given.clone()).unwrap();
        assert_eq!((a.data[0], b.data[0]), (1, 2));
        assert!(
            matches!(inputs::<3>(given), Err(Error::InvalidInput(m)) if m.contains("expected 3 inputs"))
        );
    }

    #[test]
    fn a_parameter_reads_the_same_whether_there_are_none_or_others() {
        let some = Some(vec![("scale".to_owned(), "2".to_owned())]);
        assert_eq!(parameter(&some, "scale"), Some("2"));
        assert_eq!(parameter(&some, "mode"), None);
        assert_eq!(parameter(&None, "scale"), None);
    }
}
