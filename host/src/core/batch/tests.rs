use super::rows::split;
use super::*;
use crate::runtime::contract::Datatype;
use std::time::Duration;

fn tensor(datatype: Datatype, shape: &[u64], data: Vec<u8>) -> Tensor {
    Tensor {
        datatype,
        shape: shape.to_vec(),
        data,
    }
}

/// Metadata that declares these outputs, as `split` reads them: by
/// position, for their names.
fn declaring(outputs: &[(&str, Datatype)]) -> Metadata {
    Metadata {
        name: "m".into(),
        version: "1".into(),
        inputs: vec![],
        outputs: outputs
            .iter()
            .map(|&(name, datatype)| crate::runtime::contract::TensorSpec {
                name: name.into(),
                datatype,
                shape: vec![-1],
            })
            .collect(),
    }
}

fn bytes(elements: &[&str]) -> Vec<u8> {
    let mut data = Vec::new();
    for e in elements {
        data.extend_from_slice(&(e.len() as u32).to_le_bytes());
        data.extend_from_slice(e.as_bytes());
    }
    data
}

/// A batcher whose waiting list holds requests of these (columns,
/// rows), in order; with the receivers each request waits on.
/// What each waiting request listens on: its answer, and being taken.
type Listening = Vec<(oneshot::Receiver<Rows>, oneshot::Receiver<()>)>;

fn waiting(config: BatchConfig, requests: &[(u64, usize)]) -> (Batcher, Listening) {
    let batcher = Batcher::new(config);
    let mut receivers = Vec::new();
    for (id, &(columns, rows)) in requests.iter().enumerate() {
        let (reply, answer) = oneshot::channel();
        let (taken, taken_rx) = oneshot::channel();
        let member = Member {
            id: id as u64,
            key: Key {
                inner_shapes: vec![vec![columns]],
                parameters: Map::new(),
            },
            rows,
            inputs: Arc::from(Vec::new()),
            arrived: Instant::now(),
            taken: Some(taken),
            reply,
            span: tracing::Span::none(),
        };
        assert!(!batcher.enqueue(member));
        receivers.push((answer, taken_rx));
    }
    (batcher, receivers)
}

fn config(max_batch_size: usize, preferred_batch_sizes: Vec<usize>) -> BatchConfig {
    BatchConfig {
        max_batch_size,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes,
    }
}

fn ids(batch: &[Member]) -> Vec<u64> {
    batch.iter().map(|m| m.id).collect()
}

#[test]
fn a_leader_takes_the_compatible_waiting_requests_in_order_up_to_the_max() {
    // 0 leads; 2 has other columns; 3 would pass the max of 4 rows.
    let (batcher, mut receivers) =
        waiting(config(4, vec![]), &[(3, 1), (3, 2), (4, 1), (3, 2), (3, 1)]);
    let (batch, rows, _) = batcher.gather(0).unwrap();
    assert_eq!((ids(&batch), rows), (vec![0, 1, 4], 4));
    // Those taken stop waiting for an instance; the others still wait.
    assert!(
        receivers[1]
            .1
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Closed)
    );
    assert!(
        receivers[2]
            .1
            .try_recv()
            .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
    );
    let left: Vec<u64> = batcher
        .queue
        .lock()
        .unwrap()
        .waiting
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(left, vec![2, 3]);
    // A request already taken cannot lead.
    assert!(batcher.gather(1).is_none());
}

#[test]
fn a_batch_is_cut_to_the_largest_preferred_size_it_reaches() {
    let (batcher, _receivers) = waiting(config(8, vec![2, 4]), &[(3, 1); 5]);
    let (batch, rows, _) = batcher.gather(0).unwrap();
    assert_eq!((ids(&batch), rows), (vec![0, 1, 2, 3], 4));
    // Without a preferred size in reach, it takes what fits.
    let (batcher, _receivers) = waiting(config(8, vec![4]), &[(3, 2), (3, 1)]);
    assert_eq!(batcher.gather(0).unwrap().1, 3);
}

#[test]
fn a_waiting_request_whose_client_left_is_not_taken() {
    let (batcher, mut receivers) = waiting(config(8, vec![]), &[(3, 1), (3, 1), (3, 1)]);
    drop(receivers.remove(1));
    let (batch, _, _) = batcher.gather(0).unwrap();
    assert_eq!(ids(&batch), vec![0, 2]);
    // And one that leaves is removed from the list.
    batcher.leave(1);
    assert!(batcher.queue.lock().unwrap().waiting.is_empty());
}

#[test]
fn outputs_split_back_into_each_requests_rows() {
    let floats: Vec<u8> = (0u8..24).collect();
    let outputs = vec![
        tensor(Datatype::Fp32, &[3, 2], floats.clone()),
        tensor(Datatype::Bytes, &[3], bytes(&["zero", "", "two"])),
    ];
    let metadata = declaring(&[("p", Datatype::Fp32), ("label", Datatype::Bytes)]);
    let parts = split(outputs, &[1, 2], &metadata).unwrap();
    assert_eq!(parts[0][0].shape, vec![1, 2]);
    assert_eq!(parts[0][0].data, floats[..8]);
    assert_eq!(parts[1][0].shape, vec![2, 2]);
    assert_eq!(parts[1][0].data, floats[8..]);
    assert_eq!(parts[0][1].data, bytes(&["zero"]));
    assert_eq!(parts[1][1].shape, vec![2]);
    assert_eq!(parts[1][1].data, bytes(&["", "two"]));
}

#[test]
fn an_output_without_the_batchs_rows_cannot_be_split() {
    let outputs = vec![tensor(Datatype::Uint8, &[1], vec![7])];
    let metadata = declaring(&[("sum", Datatype::Uint8)]);
    let err = split(outputs, &[1, 1], &metadata).unwrap_err();
    assert!(
        err.contains("output \"sum\" has shape [1], not 2 rows"),
        "{err}"
    );
}

#[test]
fn only_models_with_a_leading_batch_dimension_can_batch() {
    let spec = |name: &str, shape: &[i64]| crate::runtime::contract::TensorSpec {
        name: name.into(),
        datatype: Datatype::Fp32,
        shape: shape.to_vec(),
    };
    let config = BatchConfig {
        max_batch_size: 8,
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
    };
    let mut metadata = Metadata {
        name: "m".into(),
        version: "1".into(),
        inputs: vec![spec("x", &[-1, 4])],
        outputs: vec![spec("y", &[-1, 4])],
    };
    assert!(check_batchable(&metadata, &config).is_ok());
    metadata.outputs[0].shape = vec![4];
    let err = check_batchable(&metadata, &config).unwrap_err();
    assert!(err.contains("output \"y\" has shape [4]"), "{err}");
    metadata.inputs[0].shape = vec![2, 4];
    let err = check_batchable(&metadata, &config).unwrap_err();
    assert!(err.contains("input \"x\""), "{err}");
}
