//! Property tests of what a spec author or a client reaches in the spec crate: manifest
//! parsing and compiling, topic templates and their rendering. Generated inputs, a
//! bounded number of cases each; a panic or a broken invariant fails `cargo test`.

// Tests stop at the first failed step, loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use serde_json::json;
use switchboard_spec::{Identity, Topic, TopicTemplate, load, parse_manifest};

const CHAT: &str = include_str!("../../manifests/examples/chat.yaml");

fn identity() -> Identity {
    Identity {
        user_id: "u".into(),
        roles: vec!["user".into()],
        claims: Default::default(),
        anonymous: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_parsed_or_refused_never_a_panic(text in "\\PC{0,400}") {
        let _ = parse_manifest(&text);
    }

    #[test]
    fn a_mangled_manifest_is_compiled_or_refused_with_paths(cut in 0usize..4000, junk in "[ -~\\n]{0,40}") {
        // The example with some of its text replaced: every refusal names a field.
        let at = cut.min(CHAT.len());
        let at = (0..=at).rev().find(|i| CHAT.is_char_boundary(*i)).unwrap_or(0);
        let mangled = format!("{}{junk}{}", &CHAT[..at], &CHAT[(at + junk.len()).min(CHAT.len())..]);
        if let Err(errors) = load(&mangled) {
            prop_assert!(!errors.0.is_empty());
            for e in &errors.0 {
                prop_assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
            }
        }
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
        }
    }
}
