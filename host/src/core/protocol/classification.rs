//! Triton's classification extension: an output requested with
//! `classification: k` comes back as the top k classes of each row instead
//! of the raw scores, as a BYTES tensor of `"score:index"` strings, best
//! first (`"0.998317:8"`). The classes are the last dimension: an output of
//! shape `[rows, classes]` becomes `[rows, min(k, classes)]`. Triton adds
//! `:label` when the model's configuration names label files; the model
//! contract has no labels, so wasm-host never does.
//!
//! Ties go to the lower index, and NaN ranks below every number. Scores
//! are written as Triton's `std::to_string` writes them: floats with six
//! decimals, integers as they are.

use std::cmp::Ordering;

use super::Inference;
use crate::runtime::contract::{Datatype, Metadata, Tensor};

/// Replaces each output requested with a classification by its top classes.
/// `outputs` are checked ([`super::check_outputs`]): output i is the one
/// `metadata` declares i-th.
pub fn classify_requested(
    outputs: Vec<Tensor>,
    inference: &Inference,
    metadata: &Metadata,
) -> Vec<Tensor> {
    outputs
        .into_iter()
        .zip(&metadata.outputs)
        .map(|(tensor, spec)| {
            match inference
                .requested(&spec.name)
                .and_then(|o| o.classification)
            {
                Some(k) => classify(&tensor, k),
                None => tensor,
            }
        })
        .collect()
}

/// The top `k` classes of each row of a numeric tensor (checked when the
/// request was decoded), as BYTES.
pub fn classify(tensor: &Tensor, k: usize) -> Tensor {
    let scores = scores(tensor);
    let classes = tensor.shape.last().map_or(1, |&c| c as usize);
    let kept = k.min(classes);
    let mut data = Vec::new();
    if classes > 0 {
        for row in scores.chunks_exact(classes) {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| rank(row[a], row[b]).then(a.cmp(&b)));
            for &index in &order[..kept] {
                let entry = format!("{}:{index}", score_text(row[index], tensor.datatype));
                data.extend_from_slice(&(entry.len() as u32).to_le_bytes());
                data.extend_from_slice(entry.as_bytes());
            }
        }
    }
    let mut shape = tensor.shape.clone();
    match shape.last_mut() {
        Some(last) => *last = kept as u64,
        None => shape.push(kept as u64),
    }
    Tensor {
        datatype: Datatype::Bytes,
        shape,
        data,
    }
}

/// Higher scores first; NaN after every number.
fn rank(a: f64, b: f64) -> Ordering {
    a.is_nan()
        .cmp(&b.is_nan())
        .then(b.partial_cmp(&a).unwrap_or(Ordering::Equal))
}

fn score_text(score: f64, datatype: Datatype) -> String {
    match datatype {
        Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64 => format!("{score:.6}"),
        _ => format!("{score}"),
    }
}

/// Every element as a number.
fn scores(tensor: &Tensor) -> Vec<f64> {
    let Some(size) = tensor.datatype.element_size() else {
        return Vec::new();
    };
    let number = |e: &[u8]| -> f64 {
        let mut le = [0u8; 8];
        le[..size].copy_from_slice(e);
        let bits = u64::from_le_bytes(le);
        // Sign-extends a signed integer of `size` bytes.
        let signed = |bits: u64| ((bits << (64 - 8 * size)) as i64 >> (64 - 8 * size)) as f64;
        match tensor.datatype {
            Datatype::Fp16 => super::elements::f16_to_f32(bits as u16) as f64,
            Datatype::Fp32 => f32::from_bits(bits as u32) as f64,
            Datatype::Fp64 => f64::from_bits(bits),
            Datatype::Int8 | Datatype::Int16 | Datatype::Int32 | Datatype::Int64 => signed(bits),
            _ => bits as f64,
        }
    };
    tensor.data.chunks_exact(size).map(number).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::protocol::elements::bytes_elements;

    fn fp32(shape: Vec<u64>, values: &[f32]) -> Tensor {
        Tensor {
            datatype: Datatype::Fp32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn strings(tensor: &Tensor) -> Vec<String> {
        bytes_elements(&tensor.data)
            .map(|e| String::from_utf8(e.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn each_row_gets_its_top_k_best_first() {
        let t = fp32(vec![2, 4], &[0.1, 0.7, 0.15, 0.05, 0.5, 0.0, 0.25, 0.25]);
        let top = classify(&t, 2);
        assert_eq!(top.datatype, Datatype::Bytes);
        assert_eq!(top.shape, vec![2, 2]);
        assert_eq!(
            strings(&top),
            ["0.700000:1", "0.150000:2", "0.500000:0", "0.250000:2"]
        );
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let top = classify(&fp32(vec![1, 3], &[0.5, 0.5, 0.5]), 3);
        assert_eq!(strings(&top), ["0.500000:0", "0.500000:1", "0.500000:2"]);
    }

    #[test]
    fn k_past_the_classes_returns_every_class() {
        let top = classify(&fp32(vec![1, 3], &[0.2, 0.3, 0.5]), 10);
        assert_eq!(top.shape, vec![1, 3]);
        assert_eq!(strings(&top), ["0.500000:2", "0.300000:1", "0.200000:0"]);
    }

    #[test]
    fn nan_ranks_below_every_number() {
        let top = classify(&fp32(vec![3], &[f32::NAN, -1.0, f32::NEG_INFINITY]), 3);
        assert_eq!(top.shape, vec![3]);
        assert_eq!(strings(&top), ["-1.000000:1", "-inf:2", "NaN:0"]);
    }

    #[test]
    fn integers_are_written_whole_and_signed() {
        let t = Tensor {
            datatype: Datatype::Int16,
            shape: vec![3],
            data: [-3i16, 7, 2].iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        assert_eq!(strings(&classify(&t, 2)), ["7:1", "2:2"]);
    }

    #[test]
    fn an_empty_batch_stays_empty() {
        let top = classify(&fp32(vec![0, 10], &[]), 3);
        assert_eq!(top.shape, vec![0, 3]);
        assert!(top.data.is_empty());
    }
}
