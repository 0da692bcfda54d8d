//! The ONNX runner: a wasm-host model component that runs an ONNX graph with
//! tract, made to be pre-initialised.
//!
//! `wasm-host pack model.onnx` instantiates this component once, inside
//! wasmtime-wizer, and calls [`load`](Runner::load) with the model's bytes:
//! the graph is parsed, type-checked, optimised into a runnable plan and run
//! once on zeros, and wizer then snapshots the instance's memory. The packed
//! component therefore starts with the plan already in its data segments:
//! every instance maps it copy-on-write and no request ever parses anything.
//! From then on it is an ordinary model component (`metadata`, `predict`).
//!
//! Two rules keep the snapshot small and honest: memory freed during `load` is
//! zeroed before it goes back to the allocator ([`ZeroOnFree`]), so the image
//! holds the plan and not the dead proto it came from; and `load` does no I/O
//! (the bytes arrive as an argument, not from a file).

mod alloc;
mod attention;
mod corrected;
mod describe;
mod extrema;
mod ml;
mod reduce_axes;

use std::sync::OnceLock;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::Factoid;

wit_bindgen::generate!({
    world: "wasm-host:onnx-runner/runner",
    // The contract first: the runner's world includes its `predictor` world.
    path: ["../wit", "wit"],
    generate_all,
});

use exports::wasm_host::model::model::{Error, Guest as Model, ModelMetadata};
use wasm_host::model::types::{Datatype, Tensor, TensorSpec};

/// What `load` leaves behind for `predict`: this is what the snapshot holds.
struct Loaded {
    metadata: ModelMetadata,
    plan: Arc<TypedRunnableModel>,
    /// tract's element type for each input, in metadata order.
    input_types: Vec<DatumType>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

struct Runner;

impl Guest for Runner {
    fn load(onnx: Vec<u8>, name: String, version: String) -> Result<String, String> {
        if LOADED.get().is_some() {
            return Err("this runner already holds a model".into());
        }
        alloc::zero_freed_memory(true);
        let result = load(onnx, name, version);
        // Everything `load` freed (the file, the proto, the intermediate
        // graphs) is zero now; from here on nothing pays for zeroing.
        alloc::zero_freed_memory(false);
        result
    }
}

fn load(onnx: Vec<u8>, name: String, version: String) -> Result<String, String> {
    let proto = describe::decode(&onnx)?;
    drop(onnx);
    describe::check_operators(&proto)?;
    let provenance = describe::provenance(&proto);
    let (input_names, output_names) = describe::io_names(&proto)?;

    let mut model = ml::onnx()
        .model_for_proto_model(&proto)
        .map_err(|err| format!("cannot read the graph: {}", one_line(&err)))?;
    drop(proto);
    name_unknown_dimensions(&mut model, &input_names)?;
    let mut typed = model.into_typed().map_err(|err| {
        format!(
            "cannot resolve the graph's types and shapes: {}",
            one_line(&err)
        )
    })?;
    extrema::make_exact(&mut typed).map_err(|err| {
        format!(
            "cannot correct the graph's ReduceMax/ReduceMin: {}",
            one_line(&err)
        )
    })?;

    let inputs = specs(
        &typed,
        typed.input_outlets().map_err(text)?,
        &input_names,
        "input",
    )?;
    let outputs = specs(
        &typed,
        typed.output_outlets().map_err(text)?,
        &output_names,
        "output",
    )?;
    let input_types = (0..inputs.len())
        .map(|ix| typed.input_fact(ix).map(|f| f.datum_type).map_err(text))
        .collect::<Result<Vec<_>, _>>()?;
    let zeros = warm_up_inputs(&typed)?;

    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|err| format!("cannot optimise the graph: {}", one_line(&err)))?;
    // Run once now, so a model that cannot run fails the pack and not the
    // first request, and so every lazy initialisation inside tract (kernel
    // selection, scratch sizes) happens before the snapshot.
    plan.run(zeros)
        .map_err(|err| format!("the model fails on an input of zeros: {}", one_line(&err)))?;

    let metadata = ModelMetadata {
        name,
        version,
        inputs,
        outputs,
    };
    let _ = LOADED.set(Loaded {
        metadata,
        plan,
        input_types,
    });
    Ok(provenance)
}

/// ONNX lets a dimension be left blank (skl2onnx writes the batch dimension
/// so); tract needs a symbol there to type the graph. Each blank becomes a
/// symbol of its own, which the host shows as `-1`.
fn name_unknown_dimensions(model: &mut InferenceModel, names: &[String]) -> Result<(), String> {
    for (ix, name) in names.iter().enumerate() {
        let fact = model.input_fact(ix).map_err(text)?.clone();
        let Some(rank) = fact.shape.rank().concretize() else {
            return Err(format!(
                "cannot resolve the graph's types and shapes: input `{name}` declares no shape"
            ));
        };
        let dims: TVec<TDim> = fact
            .shape
            .dims()
            .enumerate()
            .map(|(axis, dim)| {
                dim.concretize()
                    .unwrap_or_else(|| model.symbols.sym(&format!("in{ix}_axis{axis}")).into())
            })
            .collect();
        debug_assert_eq!(dims.len() as i64, rank);
        let fact = fact.with_shape(dims);
        model.set_input_fact(ix, fact).map_err(text)?;
    }
    Ok(())
}

/// The contract's view of the typed graph's inputs or outputs: concrete
/// dimensions as numbers, symbolic ones as `-1`.
fn specs(
    typed: &TypedModel,
    outlets: &[OutletId],
    names: &[String],
    kind: &str,
) -> Result<Vec<TensorSpec>, String> {
    if outlets.len() != names.len() {
        return Err(format!(
            "the graph declares {} {kind}s, tract sees {}",
            names.len(),
            outlets.len()
        ));
    }
    outlets
        .iter()
        .zip(names)
        .map(|(outlet, name)| {
            let fact = typed.outlet_fact(*outlet).map_err(text)?;
            let datatype = datatype(fact.datum_type).ok_or_else(|| {
                format!(
                    "{kind} `{name}` is of type {:?}, which wasm-host cannot carry",
                    fact.datum_type
                )
            })?;
            let shape = fact
                .shape
                .iter()
                .map(|d| d.to_i64().unwrap_or(-1))
                .collect();
            Ok(TensorSpec {
                name: name.clone(),
                datatype,
                shape,
            })
        })
        .collect()
}

fn datatype(dt: DatumType) -> Option<Datatype> {
    Some(match dt {
        DatumType::Bool => Datatype::Bool,
        DatumType::U8 => Datatype::Uint8,
        DatumType::U16 => Datatype::Uint16,
        DatumType::U32 => Datatype::Uint32,
        DatumType::U64 => Datatype::Uint64,
        DatumType::I8 => Datatype::Int8,
        DatumType::I16 => Datatype::Int16,
        DatumType::I32 => Datatype::Int32,
        // Shapes computed by the graph come out as TDim; they are integers.
        DatumType::I64 | DatumType::TDim => Datatype::Int64,
        DatumType::F16 => Datatype::Fp16,
        DatumType::F32 => Datatype::Fp32,
        DatumType::F64 => Datatype::Fp64,
        _ => return None,
    })
}

/// The inputs of the run at pack time: zeros, every symbolic dimension set
/// to 1. A graph that divides integers gets ones in its integer inputs
/// instead: tract's integer division by zero panics, which would trap the
/// pack (a request with a zero divisor traps its instance, which is
/// replaced, and gets a 500 that says so).
fn warm_up_inputs(typed: &TypedModel) -> Result<TVec<TValue>, String> {
    let divides_integers = typed.nodes.iter().any(|node| {
        let op = node.op.name();
        (op == "Div" || op == "Rem")
            && node
                .outputs
                .first()
                .is_some_and(|out| out.fact.datum_type.is_integer())
    });
    (0..typed.input_outlets().map_err(text)?.len())
        .map(|ix| {
            let fact = typed.input_fact(ix).map_err(text)?;
            let shape: Vec<usize> = fact
                .shape
                .iter()
                .map(|d| d.to_i64().map_or(1, |n| n as usize))
                .collect();
            let value = if divides_integers && fact.datum_type.is_integer() {
                tract_ndarray::ArrayD::from_elem(shape.as_slice(), 1i64)
                    .into_tensor()
                    .cast_to_dt(fact.datum_type)
                    .map(|t| t.into_owned())
            } else {
                tract_onnx::prelude::Tensor::zero_dt(fact.datum_type, &shape)
            };
            value.map(TValue::from).map_err(text)
        })
        .collect()
}

impl Model for Runner {
    fn metadata() -> ModelMetadata {
        loaded().metadata.clone()
    }

    fn predict(
        inputs: Vec<Tensor>,
        _parameters: Option<Vec<(String, String)>>,
    ) -> Result<Vec<Tensor>, Error> {
        let loaded = loaded();
        let mut values = TVec::with_capacity(inputs.len());
        // Inputs and outputs follow the metadata's order; a tensor is named
        // by its spec there.
        for ((tensor, &dt), spec) in inputs
            .iter()
            .zip(&loaded.input_types)
            .zip(&loaded.metadata.inputs)
        {
            let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
            // SAFETY: `dt` is a plain numeric type (checked at load), and
            // `from_raw_dt` checks the byte count against the shape and copies
            // into an aligned buffer.
            let value =
                unsafe { tract_onnx::prelude::Tensor::from_raw_dt(dt, &shape, &tensor.data) }
                    .map_err(|err| Error::InvalidInput(format!("input `{}`: {err}", spec.name)))?;
            values.push(value.into_tvalue());
        }
        drop(inputs);
        let results = loaded.plan.run(values).map_err(|err| {
            Error::InvalidInput(format!(
                "the model cannot run on these inputs: {}",
                one_line(&err)
            ))
        })?;
        results
            .into_iter()
            .zip(&loaded.metadata.outputs)
            .map(|(value, spec)| output(value, spec))
            .collect()
    }
}

fn output(value: TValue, spec: &TensorSpec) -> Result<Tensor, Error> {
    let mut tensor = value.into_tensor();
    if tensor.datum_type() == DatumType::TDim {
        tensor = tensor
            .cast_to::<i64>()
            .map_err(|err| Error::Internal(format!("output `{}`: {err}", spec.name)))?
            .into_owned();
    }
    Ok(Tensor {
        datatype: spec.datatype,
        shape: tensor.shape().iter().map(|&d| d as u64).collect(),
        // wasm is little-endian, as the contract's tensors are.
        data: tensor.as_bytes().to_vec(),
    })
}

fn loaded() -> &'static Loaded {
    LOADED
        .get()
        .expect("this component was not packed: run `wasm-host pack model.onnx`")
}

fn text(err: impl std::fmt::Display) -> String {
    err.to_string()
}

/// An error chain on one line: the host prints pack failures as one line.
fn one_line(err: &TractError) -> String {
    let text = format!("{err:#}");
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    const MOST: usize = 400;
    match text.char_indices().nth(MOST) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

export!(Runner);
