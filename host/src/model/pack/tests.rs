use super::*;

#[test]
fn a_custom_section_appended_is_found_again() {
    // The smallest component: the preamble alone.
    let mut wasm = b"\0asm\x0d\0\x01\0".to_vec();
    assert!(provenance(&wasm).is_none());
    let record = serde_json::json!({"producer": "skl2onnx", "operators": ["Add"]});
    append_custom_section(&mut wasm, SECTION, record.to_string().as_bytes());
    assert_eq!(provenance(&wasm), Some(record));
}

#[test]
fn names_come_from_file_names() {
    assert_eq!(default_name(Path::new("a/digits_mlp.onnx")), "digits_mlp");
    assert_eq!(default_name(Path::new("my model.onnx")), "my-model");
    assert!(is_onnx(Path::new("x.ONNX")));
    assert!(!is_onnx(Path::new("x.wasm")));
}

/// A protobuf field: its key, then its value.
fn field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let varint = |mut v: u64, out: &mut Vec<u8>| loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    varint(number << 3 | 2, &mut out);
    varint(payload.len() as u64, &mut out);
    out.extend_from_slice(payload);
    out
}

#[test]
fn graph_nodes_are_counted_off_the_wire_and_broken_files_refused() {
    let node = field(4, b"Relu");
    let graph: Vec<u8> = (0..3)
        .flat_map(|_| field(1, &node))
        .chain(field(2, b"g"))
        .collect();
    // ir_version (field 1, a varint), then the graph.
    let mut model = vec![0x08, 0x07];
    model.extend(field(7, &graph));
    assert_eq!(graph_nodes(&model), Ok(3));
    assert_eq!(graph_nodes(&[0x08, 0x07]), Err("it has no graph".into()));
    assert!(graph_nodes(&model[..model.len() - 2]).is_err(), "cut short");
    assert!(graph_nodes(&[0x0b]).unwrap_err().contains("wire type 3"));
    assert!(
        graph_nodes(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err(),
        "a huge length"
    );
    assert!(graph_nodes(&[0x80; 12]).is_err(), "an endless varint");
}

#[test]
fn the_digits_export_counts_its_nodes() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-model/weights/digits_mlp.onnx");
    let nodes = graph_nodes(&std::fs::read(path).unwrap()).unwrap();
    assert!((2..50).contains(&nodes), "{nodes}");
}
