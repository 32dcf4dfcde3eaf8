//! Property tests of what a spec author or a client reaches in the spec crate: manifest
//! parsing and compiling, topic templates and their rendering. Generated inputs, a
//! bounded number of cases each; a panic or a broken invariant fails `cargo test`.
//! Manifests and templates also have checked-in seed corpora (`tests/corpus/`, see
//! `switchboard_tests::corpus`), replayed exactly and then mutated.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::json;
use switchboard_spec::topic::{decode_segment, encode_segment};
use switchboard_spec::{Identity, Topic, TopicTemplate, load, parse_manifest};
use switchboard_tests::corpus::{self, Seed};

fn identity() -> Identity {
    Identity {
        user_id: "u".into(),
        roles: vec!["user".into()],
        claims: Default::default(),
        anonymous: false,
    }
}

fn manifest_seeds() -> Vec<Seed> {
    corpus::seeds(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/manifests"
    ))
}

/// The corpus and the project's example apps, which hold most of the grammar.
fn mutable_manifests() -> Vec<Seed> {
    let mut seeds = manifest_seeds();
    seeds.extend(corpus::seeds(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples"
    )));
    seeds
}

fn template_seeds() -> Vec<Seed> {
    corpus::seeds(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/corpus/templates"
    ))
}

/// A manifest is compiled, or refused with errors that each name a field.
fn compiled_or_refused_with_paths(text: &str) -> Result<Option<Vec<String>>, TestCaseError> {
    match load(text) {
        Ok(_) => Ok(None),
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
            }
            Ok(Some(errors.0.iter().map(ToString::to_string).collect()))
        }
    }
}

#[test]
fn every_manifest_seed_comes_to_its_named_outcome() {
    for seed in manifest_seeds() {
        let refused = compiled_or_refused_with_paths(seed.text()).unwrap();
        if seed.must_be_accepted() {
            assert_eq!(refused, None, "{}", seed.name);
            continue;
        }
        // A refused seed names the field at fault on its first line: `# path: P`.
        let path = seed
            .text()
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# path: "));
        let path = path.unwrap_or_else(|| panic!("{} has no `# path:` first line", seed.name));
        let errors = refused.unwrap_or_else(|| panic!("{} was accepted", seed.name));
        assert!(
            errors.iter().any(|e| e.starts_with(&format!("{path}: "))),
            "{}: no error at {path}: {errors:?}",
            seed.name
        );
    }
}

#[test]
fn every_template_seed_comes_to_its_named_outcome() {
    for seed in template_seeds() {
        let parsed = TopicTemplate::parse(seed.text());
        assert_eq!(
            parsed.is_ok(),
            seed.must_be_accepted(),
            "{}: {parsed:?}",
            seed.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_manifest_seeds_are_compiled_or_refused_with_paths(bytes in corpus::mutations(&mutable_manifests())) {
        if let Ok(text) = std::str::from_utf8(&bytes) {
            compiled_or_refused_with_paths(text)?;
        }
    }

    #[test]
    fn mutated_template_seeds_parse_or_refuse_and_render_valid_topics(bytes in corpus::mutations(&template_seeds())) {
        let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
        if let Ok(template) = TopicTemplate::parse(text) {
            let fields: serde_json::Map<String, serde_json::Value> = text
                .split(['{', '}'])
                .skip(1)
                .step_by(2)
                .map(|name| (name.to_owned(), json!("v")))
                .collect();
            if let Ok(topic) = template.render(&serde_json::Value::Object(fields), &identity()) {
                prop_assert!(Topic::parse(topic.as_str()).is_ok(), "{topic} does not parse back");
            }
        }
    }

    #[test]
    fn any_text_is_parsed_or_refused_never_a_panic(text in "\\PC{0,400}") {
        let _ = parse_manifest(&text);
    }

    #[test]
    fn templates_parse_or_refuse_never_a_panic(source in "\\PC{0,80}") {
        let _ = TopicTemplate::parse(&source);
    }

    #[test]
    fn a_rendered_topic_is_always_a_valid_topic(value in "\\PC{0,40}") {
        // Whatever a client puts in the field, the topic it renders to (if any) is a
        // topic the parser accepts: no wildcard, no separator smuggled in.
        let template = TopicTemplate::parse("room:{roomId}").unwrap();
        if let Ok(topic) = template.render(&json!({"roomId": value}), &identity()) {
            let reparsed = Topic::parse(topic.as_str());
            prop_assert!(reparsed.is_ok(), "{topic} does not parse back");
            for segment in topic.segments() {
                prop_assert!(
                    !segment.is_empty() && !segment.contains(['.', '*', '>', ' ', ':']),
                    "segment {segment:?} of {topic}"
                );
            }
            let (_, value_segment) = topic.as_str().split_once(':').unwrap();
            prop_assert_eq!(decode_segment(value_segment), Some(value.clone()), "{} does not decode back", topic);
        }
    }

    #[test]
    fn every_value_has_exactly_one_segment_spelling(value in "\\PC{1,40}", other in "[A-Za-z0-9_@=+-]{1,12}") {
        let segment = encode_segment(&value);
        prop_assert_eq!(decode_segment(&segment), Some(value));
        // Any other topic-alphabet text either decodes to a value that encodes back to
        // it, or to nothing: never a second spelling of some value.
        if let Some(decoded) = decode_segment(&other) {
            prop_assert_eq!(encode_segment(&decoded), other);
        }
    }
}
