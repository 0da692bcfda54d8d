//! A batch's tensors: the members' inputs joined along dimension 0, and the
//! outputs split back into each member's rows.

use super::Member;
use crate::core::protocol;
use crate::runtime::contract::{Datatype, Metadata, Tensor};

/// The batch's inputs: each member's tensors joined along dimension 0
/// (members agree on every other dimension and, by the metadata, on the
/// datatypes). `BYTES` data joins the same way: its elements are
/// length-prefixed in row-major order.
pub(super) fn concat(batch: &[Member]) -> Vec<Tensor> {
    let first = &batch[0].inputs;
    (0..first.len())
        .map(|i| {
            let rows: u64 = batch.iter().map(|m| m.inputs[i].shape[0]).sum();
            let bytes = batch.iter().map(|m| m.inputs[i].data.len()).sum();
            let mut data = Vec::with_capacity(bytes);
            for member in batch {
                data.extend_from_slice(&member.inputs[i].data);
            }
            let mut shape = first[i].shape.clone();
            shape[0] = rows;
            Tensor {
                datatype: first[i].datatype,
                shape,
                data,
            }
        })
        .collect()
}

/// Splits a batch's outputs (checked against the metadata, so output i is the
/// one it declares i-th) into each request's rows, in order. An output whose
/// dimension 0 is not the batch's rows cannot be split, which fails the batch.
pub(super) fn split(
    outputs: Vec<Tensor>,
    rows: &[usize],
    metadata: &Metadata,
) -> Result<Vec<Vec<Tensor>>, String> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for (output, spec) in outputs.into_iter().zip(&metadata.outputs) {
        let name = &spec.name;
        if output.shape.first().copied() != Some(total as u64) {
            return Err(format!(
                "output {name:?} has shape {:?}, not {total} rows, so it cannot be split among \
                 the batch's requests",
                output.shape
            ));
        }
        let per_row = protocol::element_count(&output.shape[1..])
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("output {name:?} is too large to split"))?;
        let ends = row_ends(&output, per_row, total);
        let mut start = 0;
        let mut row = 0;
        for (part, &n) in parts.iter_mut().zip(rows) {
            row += n;
            let end = ends[row];
            let mut shape = output.shape.clone();
            shape[0] = n as u64;
            part.push(Tensor {
                datatype: output.datatype,
                shape,
                data: output.data[start..end].to_vec(),
            });
            start = end;
        }
    }
    Ok(parts)
}

/// The byte offset where each row of a checked output ends (`[0]` = 0).
pub(super) fn row_ends(output: &Tensor, per_row: usize, rows: usize) -> Vec<usize> {
    match output.datatype.element_size() {
        Some(size) => (0..=rows).map(|r| r * per_row * size).collect(),
        None => {
            debug_assert_eq!(output.datatype, Datatype::Bytes);
            let mut ends = Vec::with_capacity(rows + 1);
            ends.push(0);
            let mut offset = 0;
            for (i, element) in protocol::bytes_elements(&output.data).enumerate() {
                offset += 4 + element.map_or(0, <[u8]>::len);
                if (i + 1) % per_row.max(1) == 0 {
                    ends.push(offset);
                }
            }
            // Rows of no elements end where they start.
            ends.resize(rows + 1, offset);
            ends
        }
    }
}
