//! Property tests of what the postmortem crate does with text anyone with
//! edit (or read, for previews) access sends: the blameless check and the
//! Markdown rendering. Whatever the text, they answer within their bounds.
#![allow(clippy::unwrap_used)]

use firebreak_postmortem::lint::{self, EXCERPT_CONTEXT_CHARS, MAX_FINDINGS, MAX_TEXT_CHARS};
use firebreak_postmortem::markdown_html;
use proptest::prelude::*;

/// Text made of blame words, names, punctuation, line breaks and any other
/// characters, in any order.
fn draft() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("human error ".to_string()),
            Just("should have ".to_string()),
            Just("Alice broke ".to_string()),
            Just("@dave caused ".to_string()),
            Just("Bob's fault ".to_string()),
            Just("blame ".to_string()),
            Just("careless".to_string()),
            Just("\n".to_string()),
            Just(". ".to_string()),
            Just("’s ".to_string()),
            Just("--".to_string()),
            "\\PC{0,12}",
            "[\\u{0}-\\u{10FFFF}]{0,4}",
        ],
        0..80,
    )
    .prop_map(|parts| parts.concat())
}

/// Line and column (1-based, characters) of a byte offset, the slow way.
fn position(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap().chars().count() + 1;
    (line, column)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_blameless_check_is_bounded_and_points_at_what_it_found(text in draft(), people in prop::collection::vec("\\PC{0,10}", 0..4)) {
        let found = lint::check(&text, &people);
        prop_assert!(found.findings.len() <= MAX_FINDINGS);
        prop_assert!(found.total >= found.findings.len());
        prop_assert_eq!(found.truncated, found.total > found.findings.len());
        let mut last = (0, 0);
        for f in &found.findings {
            prop_assert!(f.start < f.end && f.end <= text.len());
            prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
            prop_assert!((f.start, f.end) > last, "in order, no duplicates");
            last = (f.start, f.end);
            prop_assert_eq!((f.line, f.column), position(&text, f.start));
            let span = &text[f.start..f.end];
            prop_assert!(f.text.chars().count() <= MAX_TEXT_CHARS + 1);
            prop_assert!(span.starts_with(f.text.trim_end_matches('…')));
            prop_assert!(f.excerpt.chars().count() <= 2 * EXCERPT_CONTEXT_CHARS + MAX_TEXT_CHARS + 3);
            // The context around the finding stays in its line(s): the only
            // line breaks in an excerpt are those inside the finding (a
            // phrase may wrap, as Markdown paragraphs do).
            prop_assert_eq!(
                f.excerpt.matches('\n').count(),
                f.text.matches('\n').count(),
                "{:?}", f
            );
        }
    }

    #[test]
    fn markdown_never_renders_raw_html_scripts_or_fetches(text in draft(), url in "\\PC{0,20}") {
        for doc in [
            text.clone(),
            format!("{text}\n\n<script>alert(1)</script> <img src=x onerror=alert(1)>"),
            format!("[x](javascript:{url}) ![y]({url}) ![z](/api/v1/gates/argo/{url})"),
        ] {
            let html = markdown_html(&doc).to_lowercase();
            prop_assert!(!html.contains("<script"), "{}", html);
            prop_assert!(!html.contains("<img"), "{}", html);
            prop_assert!(!html.contains("href=\"javascript:"), "{}", html);
        }
    }
}
