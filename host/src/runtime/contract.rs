//! The host side of the WIT contract in `wit/`, generated at compile time.
//!
//! `wit/model.wit` is the single source of truth: if the contract changes, the
//! host stops compiling until it agrees, and so do the guests.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "predictor",
    // Guests may sleep or wait on WASI clocks: calls into them are async so a
    // waiting guest never holds a runtime thread.
    exports: { default: async },
});

pub use self::exports::wasm_host::model::model::Error as ModelError;
pub use self::wasm_host::model::types::{Datatype, Metadata, Tensor, TensorSpec};

use wasmtime::Engine;
use wasmtime::component::Component;

/// The contract's package, as `wit/model.wit` declares it.
pub const PACKAGE: &str = "wasm-host:model";

/// The contract version this host speaks: a model must be built against it.
pub const VERSION: &str = "0.2.0";

/// The export a model component must have, as a component names it.
pub const MODEL_EXPORT: &str = "wasm-host:model/model@0.2.0";

/// The contract version a component exports a `model` interface of, when it
/// is not this host's: `Some("0.1.0")` for a model built against 0.1.0,
/// whose export is `wasm-host:model/model@0.1.0`. `None` when the component
/// exports this version, or no version at all.
pub fn other_version(component: &Component, engine: &Engine) -> Option<String> {
    let ty = component.component_type();
    if ty.get_export(engine, MODEL_EXPORT).is_some() {
        return None;
    }
    let prefix = format!("{PACKAGE}/model@");
    ty.exports(engine)
        .find_map(|(name, _)| name.strip_prefix(&prefix).map(str::to_owned))
}

/// Why a component built against another version of the contract cannot be
/// served, and what to do about it.
pub fn other_version_refusal(shown: &str, version: &str) -> String {
    format!(
        "{shown} was built against the model contract {PACKAGE}@{version}; this wasm-host \
         speaks {VERSION}: rebuild it with this repository's guest SDK (guest-sdk/), or \
         re-pack an ONNX model with 'wasm-host pack'"
    )
}

impl TensorSpec {
    /// Whether a tensor of `shape` fits this spec: the same rank, and every
    /// fixed dimension as declared (`-1` is any size). Requests' inputs and
    /// models' outputs are held to it alike.
    pub fn fits(&self, shape: &[u64]) -> bool {
        shape.len() == self.shape.len()
            && shape
                .iter()
                .zip(&self.shape)
                .all(|(&got, &want)| want == -1 || i64::try_from(got) == Ok(want))
    }
}

impl Datatype {
    /// Every datatype, for parsing names.
    pub const ALL: [Datatype; 13] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    /// The name the Open Inference Protocol uses ("FP32", "INT64", ...).
    pub fn oip_name(self) -> &'static str {
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

    pub fn from_oip_name(name: &str) -> Option<Datatype> {
        Self::ALL.into_iter().find(|d| d.oip_name() == name)
    }

    /// Bytes per element; `None` for variable-length `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => 1,
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => 2,
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => 4,
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.oip_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_fits_a_spec_of_its_rank_with_its_fixed_dimensions() {
        let spec = TensorSpec {
            name: "x".into(),
            datatype: Datatype::Fp32,
            shape: vec![-1, 64],
        };
        assert!(spec.fits(&[1, 64]));
        assert!(spec.fits(&[u64::MAX, 64]), "-1 takes any size");
        assert!(!spec.fits(&[1, 63]));
        assert!(!spec.fits(&[64]), "rank 1 against rank 2");
        assert!(!spec.fits(&[1, 64, 1]));
        let fixed = TensorSpec {
            shape: vec![2],
            ..spec
        };
        assert!(!fixed.fits(&[u64::MAX]), "no wrap to -1");
    }

    #[test]
    fn the_version_is_the_one_wit_model_wit_declares() {
        let wit = include_str!("../../../wit/model.wit");
        assert!(wit.contains(&format!("package {PACKAGE}@{VERSION};")));
        assert_eq!(MODEL_EXPORT, format!("{PACKAGE}/model@{VERSION}"));
    }
}
