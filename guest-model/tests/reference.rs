//! The model against scikit-learn's own outputs for 200 test images
//! (`weights/digits_reference.json`): labels exactly, probabilities to 1e-5.

use guest_model::mlp::Mlp;
use serde_json::Value;

fn floats(value: &Value) -> Vec<f32> {
    let list = value.as_array().expect("an array");
    list.iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

#[test]
fn matches_scikit_learn_on_200_rows() {
    let text = include_str!("../weights/digits_reference.json");
    let reference: Value = serde_json::from_str(text).unwrap();
    assert_eq!(reference["format"], "digits_reference/v1");
    let rows = reference["inputs"].as_array().unwrap();
    let expected_labels = reference["predicted_labels"].as_array().unwrap();
    let expected_probabilities = reference["probabilities"].as_array().unwrap();
    assert_eq!(rows.len(), 200);
    assert_eq!(expected_labels.len(), 200);

    let mlp = Mlp::embedded();
    let inputs: Vec<f32> = rows.iter().flat_map(floats).collect();
    let mut probabilities = vec![0.0; 200 * mlp.classes()];
    let mut labels = vec![0; 200];
    mlp.predict_batch(&inputs, &mut probabilities, &mut labels);

    let mut worst = 0.0f32;
    for (i, (row, want)) in rows.iter().zip(expected_probabilities).enumerate() {
        assert_eq!(
            labels[i],
            expected_labels[i].as_i64().unwrap(),
            "label of row {i}"
        );
        let got = &probabilities[i * 10..][..10];
        for (j, (&g, w)) in got.iter().zip(floats(want)).enumerate() {
            let diff = (g - w).abs();
            assert!(diff <= 1e-5, "row {i}, class {j}: {g} vs {w}");
            worst = worst.max(diff);
        }

        // One row at a time gives the same answer as the batch.
        let mut single = [0.0; 10];
        assert_eq!(mlp.predict_into(&floats(row), &mut single), labels[i]);
        assert_eq!(single, got);
    }
    println!("largest probability difference: {worst:e}");
}
