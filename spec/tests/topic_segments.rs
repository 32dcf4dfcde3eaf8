//! The shared vectors of template values in topic segments (`tests/corpus/topic-segments/`),
//! which the TypeScript client checks too: both sides encode and refuse the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use switchboard_spec::topic::{decode_segment, encode_segment};

fn vectors() -> Value {
    let text = include_str!("corpus/topic-segments/vectors.json");
    serde_json::from_str(text).expect("the vectors are JSON")
}

#[test]
fn every_vector_encodes_and_decodes_both_ways() {
    let v = vectors();
    let encoded = v["encoded"].as_array().unwrap();
    assert!(encoded.len() >= 10);
    for case in encoded {
        let (value, segment) = (
            case["value"].as_str().unwrap(),
            case["segment"].as_str().unwrap(),
        );
        assert_eq!(encode_segment(value), segment, "{value}");
        assert_eq!(decode_segment(segment).as_deref(), Some(value), "{segment}");
    }
}

#[test]
fn every_refused_spelling_is_refused() {
    for case in vectors()["refused"].as_array().unwrap() {
        let segment = case["segment"].as_str().unwrap();
        assert_eq!(decode_segment(segment), None, "{segment}: {}", case["why"]);
    }
}
