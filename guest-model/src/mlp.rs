//! The classifier's math: the `DMLP` weights format and the forward pass.
//!
//! Plain Rust with no wasm or bindings dependency, so the reference test and
//! the native bench server run exactly the code the component runs.
//!
//! The weights are used in place, inside the embedded file, rather than
//! decoded into a heap `Vec`: in a component the file sits in a data segment
//! that the host maps copy-on-write, so every instance of the model shares one
//! copy of the weights instead of each dirtying ~26 KB of its own heap.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

/// Gives `include_bytes!` the alignment of `f32`, which a plain `[u8; N]`
/// does not have, so the weights can be read as `&[f32]` without copying.
#[repr(C, align(4))]
struct Aligned<B: ?Sized>(B);

static EMBEDDED: &Aligned<[u8]> = &Aligned(*include_bytes!("../weights/digits_mlp.bin"));

/// The activation codes of the `DMLP` format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    Softmax,
    Logistic,
    Tanh,
}

impl Activation {
    fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Activation::Identity,
            1 => Activation::Relu,
            2 => Activation::Softmax,
            3 => Activation::Logistic,
            4 => Activation::Tanh,
            _ => return None,
        })
    }

    fn apply(self, values: &mut [f32]) {
        match self {
            Activation::Identity => {}
            // Not `v.max(0.0)`: Rust's max treats NaN unlike wasm's `f32.max`,
            // so in a component it becomes a call to libm's fmaxf (1 % of the
            // host's CPU under load, by perf); a compare and select is inline.
            Activation::Relu => values
                .iter_mut()
                .for_each(|v| *v = if *v > 0.0 { *v } else { 0.0 }),
            Activation::Logistic => values
                .iter_mut()
                .for_each(|v| *v = 1.0 / (1.0 + (-*v).exp())),
            Activation::Tanh => values.iter_mut().for_each(|v| *v = v.tanh()),
            Activation::Softmax => {
                // Subtracting the maximum keeps exp() finite for large logits.
                let max = values
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
                let mut sum = 0.0;
                for v in values.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                values.iter_mut().for_each(|v| *v /= sum);
            }
        }
    }
}

struct Layer {
    inputs: usize,
    outputs: usize,
    activation: Activation,
    /// `[inputs][outputs]`, row-major, as scikit-learn's `coefs_`.
    weights: Cow<'static, [f32]>,
    bias: Cow<'static, [f32]>,
}

impl Layer {
    /// `output = act(input @ W + b)`, a block of output lanes at a time:
    /// each block's sums are a local array while every input row of `W`
    /// adds to them, and are stored into `output` once. Blocks of 64, 32, 4
    /// and 1 lanes cover the digits' 64-, 32- and 10-wide layers in five
    /// blocks.
    fn apply(&self, input: &[f32], output: &mut [f32]) {
        let mut done = 0;
        done += self.blocks::<64>(input, done, &mut output[done..]);
        done += self.blocks::<32>(input, done, &mut output[done..]);
        done += self.blocks::<4>(input, done, &mut output[done..]);
        self.blocks::<1>(input, done, &mut output[done..]);
        self.activation.apply(output);
    }

    /// Fills as many whole blocks of `N` outputs as `output` holds, starting
    /// at output lane `first`; returns how many lanes that was.
    ///
    /// Each output still starts from its bias and adds `x * w` input by
    /// input, in order, so the sums are bit-for-bit those of a plain loop.
    /// Summing into a local instead of `output` in memory took the guest's
    /// `predict` from 32.4k to 24.7k instructions, and the same math natively
    /// from 13.3k to 8.2k: there are no stores and reloads of the outputs per
    /// input, and in a component the loop's epoch check comes once per input
    /// and block. Cranelift still keeps the sums on the stack rather than in
    /// registers; with 32 lanes at most the call took 26.4k, with 16 30.6k.
    fn blocks<const N: usize>(&self, input: &[f32], first: usize, output: &mut [f32]) -> usize {
        let mut filled = 0;
        for (block, out) in output.chunks_exact_mut(N).enumerate() {
            let lane = first + block * N;
            let mut sums: [f32; N] = self.bias[lane..lane + N].try_into().unwrap();
            for (&x, row) in input.iter().zip(self.weights.chunks_exact(self.outputs)) {
                // Blank pixels and ReLU zeros are about half of all inputs,
                // and skipping them leaves the sums bit-for-bit unchanged.
                if x == 0.0 {
                    continue;
                }
                let w: &[f32; N] = row[lane..lane + N].try_into().unwrap();
                for i in 0..N {
                    sums[i] += x * w[i];
                }
            }
            out.copy_from_slice(&sums);
            filled += N;
        }
        filled
    }
}

/// A multi-layer perceptron loaded from the `DMLP` format (see
/// `weights/README.md`).
pub struct Mlp {
    input_size: usize,
    input_scale: f32,
    labels: Vec<i64>,
    layers: Vec<Layer>,
    /// The widest layer, including the input: the size of each scratch buffer.
    width: usize,
}

/// Why a `DMLP` file could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid DMLP weights: {}", self.0)
    }
}

impl std::error::Error for FormatError {}

/// Reads the file front to back; every field of the format is 4 bytes.
struct Reader {
    bytes: &'static [u8],
    at: usize,
}

impl Reader {
    fn take(&mut self, len: usize, what: &str) -> Result<&'static [u8], FormatError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len());
        let end = end.ok_or_else(|| FormatError(format!("file ends inside {what}")))?;
        let bytes = &self.bytes[self.at..end];
        self.at = end;
        Ok(bytes)
    }

    fn word(&mut self, what: &str) -> Result<[u8; 4], FormatError> {
        Ok(self.take(4, what)?.try_into().unwrap())
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.word(what).map(u32::from_le_bytes)
    }

    fn size(&mut self, what: &str) -> Result<usize, FormatError> {
        match self.u32(what)? {
            0 => Err(FormatError(format!("{what} is 0"))),
            n => Ok(n as usize),
        }
    }

    /// Borrows `len` floats in place when the platform allows it, and
    /// decodes a copy otherwise (big-endian, or a misaligned buffer).
    fn floats(&mut self, len: usize, what: &str) -> Result<Cow<'static, [f32]>, FormatError> {
        let bytes = self.take(len.saturating_mul(4), what)?;
        if cfg!(target_endian = "little") && bytes.as_ptr().cast::<f32>().is_aligned() {
            // SAFETY: the pointer is aligned for f32 and valid for `len * 4`
            // bytes for 'static; every bit pattern is a valid f32; and on a
            // little-endian target the in-memory layout is the file's.
            Ok(Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(bytes.as_ptr().cast::<f32>(), len)
            }))
        } else {
            Ok(Cow::Owned(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            ))
        }
    }
}

impl Mlp {
    /// The digits model compiled into this crate, parsed on first use. The
    /// parse only reads the header; the weights stay where they are.
    pub fn embedded() -> &'static Mlp {
        static MLP: OnceLock<Mlp> = OnceLock::new();
        MLP.get_or_init(|| {
            Mlp::parse(&EMBEDDED.0)
                .expect("the embedded weights are valid (see tests/reference.rs)")
        })
    }

    /// Parses a `DMLP` file. `'static` because the weights are borrowed from
    /// `bytes`, not copied (a 4-byte-aligned buffer on a little-endian
    /// target; anything else is decoded into owned memory).
    pub fn parse(bytes: &'static [u8]) -> Result<Mlp, FormatError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4, "the magic")? != b"DMLP" {
            return Err(FormatError("does not start with `DMLP`".into()));
        }
        match r.u32("the version")? {
            1 => {}
            v => return Err(FormatError(format!("version {v}, expected 1"))),
        }
        let layer_count = r.size("the layer count")?;
        let input_size = r.size("the input size")?;
        let input_scale = f32::from_le_bytes(r.word("the input scale")?);
        let classes = r.size("the class count")?;

        let mut shapes = Vec::with_capacity(layer_count.min(64));
        let mut previous = input_size;
        for i in 0..layer_count {
            let (inputs, outputs) = (r.size("a layer's inputs")?, r.size("a layer's outputs")?);
            let code = r.u32("a layer's activation")?;
            let activation = Activation::from_code(code)
                .ok_or_else(|| FormatError(format!("layer {i}: unknown activation {code}")))?;
            if inputs != previous {
                return Err(FormatError(format!(
                    "layer {i} takes {inputs} inputs but receives {previous}"
                )));
            }
            shapes.push((inputs, outputs, activation));
            previous = outputs;
        }
        if previous != classes {
            return Err(FormatError(format!(
                "the last layer has {previous} outputs for {classes} classes"
            )));
        }

        let labels = (0..classes)
            .map(|_| {
                r.word("the class labels")
                    .map(|w| i64::from(i32::from_le_bytes(w)))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let mut layers = Vec::with_capacity(shapes.len());
        for (inputs, outputs, activation) in shapes {
            let weights = r.floats(inputs.saturating_mul(outputs), "a layer's weights")?;
            let bias = r.floats(outputs, "a layer's bias")?;
            layers.push(Layer {
                inputs,
                outputs,
                activation,
                weights,
                bias,
            });
        }
        if r.at != bytes.len() {
            return Err(FormatError(format!(
                "{} unexpected bytes after the last layer",
                bytes.len() - r.at
            )));
        }

        let width = layers
            .iter()
            .map(|l| l.outputs)
            .fold(input_size, usize::max);
        Ok(Mlp {
            input_size,
            input_scale,
            labels,
            layers,
            width,
        })
    }

    /// Features per row (64 for the digits: 8×8 pixels).
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// What a raw input was multiplied by in training (1/16 for the digits'
    /// 0..16 pixels). The model applies no scaling itself: callers do.
    pub fn input_scale(&self) -> f32 {
        self.input_scale
    }

    /// Probabilities per row: one per class.
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    /// The label of each class, in probability order.
    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// Whether the weights are read in place from the embedded file (true on
    /// little-endian targets) rather than from a decoded heap copy.
    pub fn is_zero_copy(&self) -> bool {
        self.layers
            .iter()
            .all(|l| matches!((&l.weights, &l.bias), (Cow::Borrowed(_), Cow::Borrowed(_))))
    }

    /// Classifies one row: writes its class probabilities to `probabilities`
    /// and returns its label.
    ///
    /// # Panics
    /// If `input` is not [`input_size`](Self::input_size) long or
    /// `probabilities` not [`classes`](Self::classes) long.
    pub fn predict_into(&self, input: &[f32], probabilities: &mut [f32]) -> i64 {
        let mut label = [0];
        self.predict_batch(input, probabilities, &mut label);
        label[0]
    }

    /// Classifies `labels.len()` rows stored one after another in `inputs`
    /// (rows × [`input_size`](Self::input_size)), writing rows ×
    /// [`classes`](Self::classes) probabilities and one label per row.
    ///
    /// # Panics
    /// If the three lengths disagree about the number of rows.
    pub fn predict_batch(&self, inputs: &[f32], probabilities: &mut [f32], labels: &mut [i64]) {
        let rows = labels.len();
        assert_eq!(
            inputs.len(),
            rows * self.input_size,
            "inputs for {rows} rows"
        );
        assert_eq!(
            probabilities.len(),
            rows * self.classes(),
            "probabilities for {rows} rows"
        );

        let mut scratch = vec![0.0; 2 * self.width];
        let rows = inputs
            .chunks_exact(self.input_size)
            .zip(probabilities.chunks_exact_mut(self.classes()));
        for ((input, out), label) in rows.zip(labels) {
            let (mut src, mut dst) = scratch.split_at_mut(self.width);
            src[..input.len()].copy_from_slice(input);
            let mut len = input.len();
            for layer in &self.layers {
                debug_assert_eq!(layer.inputs, len);
                layer.apply(&src[..len], &mut dst[..layer.outputs]);
                len = layer.outputs;
                std::mem::swap(&mut src, &mut dst);
            }
            out.copy_from_slice(&src[..len]);
            *label = self.labels[argmax(out)];
        }
    }
}

/// The index of the first largest value, as numpy's `argmax` picks it.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_weights_are_the_digits_model() {
        let mlp = Mlp::embedded();
        assert_eq!(mlp.input_size(), 64);
        assert_eq!(mlp.input_scale(), 0.0625);
        assert_eq!(mlp.labels(), (0..10).collect::<Vec<i64>>());
        assert_eq!(mlp.layers.len(), 3);
        #[cfg(target_endian = "little")]
        assert!(mlp.is_zero_copy());
    }

    #[test]
    fn rejects_truncated_and_misaligned_files() {
        let bytes: &'static [u8] = &EMBEDDED.0;
        assert!(Mlp::parse(&bytes[..bytes.len() - 4]).is_err());
        assert!(Mlp::parse(&bytes[..10]).is_err());
        assert!(Mlp::parse(b"NOPE").is_err());

        // A copy one byte off alignment still loads, by decoding.
        let shifted: &'static mut [u8] = Vec::leak(vec![0; bytes.len() + 1]);
        shifted[1..].copy_from_slice(bytes);
        let mlp = Mlp::parse(&shifted[1..]).unwrap();
        assert!(!mlp.is_zero_copy());
        let row = [0.5; 64];
        let (mut a, mut b) = ([0.0; 10], [0.0; 10]);
        let label = mlp.predict_into(&row, &mut a);
        assert_eq!(label, Mlp::embedded().predict_into(&row, &mut b));
        assert_eq!(a, b);
    }
}
