//! The blameless check: finds language that blames people ("human error",
//! "should have", "X's fault", a named person as the cause of a failure, …) and
//! suggests a system-focused wording. It informs; it never blocks a save.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Byte offsets into the text.
    pub start: usize,
    pub end: usize,
    /// 1-based line and column (in characters).
    pub line: usize,
    pub column: usize,
    pub text: String,
    pub rule: &'static str,
    pub message: String,
    pub suggestion: String,
}

struct Phrase {
    rule: &'static str,
    /// Lowercase words; `*` matches any one word.
    words: &'static [&'static str],
    message: &'static str,
    suggestion: &'static str,
}

const PHRASES: &[Phrase] = &[
    Phrase { rule: "human-error", words: &["human", "error"], message: "\"human error\" names a person as the cause and ends the inquiry", suggestion: "say which part of the system made the mistake easy to make (a missing check, an unclear runbook, a risky default)" },
    Phrase { rule: "human-error", words: &["operator", "error"], message: "\"operator error\" names a person as the cause", suggestion: "describe the condition the operator faced and what the tooling allowed" },
    Phrase { rule: "human-error", words: &["user", "error"], message: "\"user error\" names a person as the cause", suggestion: "describe what the interface or process allowed" },
    Phrase { rule: "counterfactual", words: &["should", "have"], message: "\"should have\" judges with hindsight", suggestion: "describe what the person knew at the time, and what would have made the other choice easy" },
    Phrase { rule: "counterfactual", words: &["should've"], message: "\"should've\" judges with hindsight", suggestion: "describe what the person knew at the time, and what would have made the other choice easy" },
    Phrase { rule: "counterfactual", words: &["shouldn't", "have"], message: "\"shouldn't have\" judges with hindsight", suggestion: "describe the safeguard that was missing" },
    Phrase { rule: "counterfactual", words: &["could", "have", "prevented"], message: "\"could have prevented\" judges with hindsight", suggestion: "name the safeguard that would have prevented it, as an action item" },
    Phrase { rule: "counterfactual", words: &["failed", "to", "notice"], message: "\"failed to notice\" puts the gap in a person", suggestion: "say what signal was missing or drowned out" },
    Phrase { rule: "counterfactual", words: &["forgot", "to"], message: "\"forgot to\" puts the gap in a person", suggestion: "say which step had no reminder, checklist or automation" },
    Phrase { rule: "fault", words: &["fault", "of"], message: "assigning fault blames a person", suggestion: "describe the contributing factors instead" },
    Phrase { rule: "fault", words: &["to", "blame"], message: "blaming names a person as the cause", suggestion: "describe the contributing factors instead" },
    Phrase { rule: "fault", words: &["blame", "*"], message: "blaming names a person as the cause", suggestion: "describe the contributing factors instead" },
    Phrase { rule: "fault", words: &["blamed"], message: "blaming names a person as the cause", suggestion: "describe the contributing factors instead" },
    Phrase { rule: "judgement", words: &["careless"], message: "\"careless\" judges a person", suggestion: "describe the action and what made it risky" },
    Phrase { rule: "judgement", words: &["carelessly"], message: "\"carelessly\" judges a person", suggestion: "describe the action and what made it risky" },
    Phrase { rule: "judgement", words: &["carelessness"], message: "\"carelessness\" judges a person", suggestion: "describe the action and what made it risky" },
    Phrase { rule: "judgement", words: &["negligent"], message: "\"negligent\" judges a person", suggestion: "describe the action and what made it risky" },
    Phrase { rule: "judgement", words: &["negligence"], message: "\"negligence\" judges a person", suggestion: "describe the action and what made it risky" },
    Phrase { rule: "judgement", words: &["sloppy"], message: "\"sloppy\" judges a person", suggestion: "describe the gap in review or tooling" },
    Phrase { rule: "judgement", words: &["incompetent"], message: "\"incompetent\" judges a person", suggestion: "describe the gap in training, documentation or tooling" },
    Phrase { rule: "judgement", words: &["lazy"], message: "\"lazy\" judges a person", suggestion: "describe the pressure or missing automation" },
    Phrase { rule: "judgement", words: &["stupid"], message: "\"stupid\" judges a person", suggestion: "describe what made the action seem right at the time" },
    Phrase { rule: "judgement", words: &["reckless"], message: "\"reckless\" judges a person", suggestion: "describe the action and what made it risky" },
];

/// Verbs that, after a person, make them the cause of a failure.
const CAUSE_VERBS: &[&str] = &[
    "broke",
    "caused",
    "forgot",
    "missed",
    "ignored",
    "messed",
    "screwed",
    "botched",
    "neglected",
    "overlooked",
];

/// Words that look like names at the start of a sentence but are not people.
const NOT_NAMES: &[&str] = &[
    "the",
    "a",
    "an",
    "this",
    "that",
    "it",
    "we",
    "they",
    "our",
    "its",
    "their",
    "nobody",
    "no",
    "one",
    "which",
    "what",
    "deploy",
    "deployment",
    "change",
    "config",
    "release",
    "rollout",
    "canary",
    "alert",
    "service",
];

/// Checks `text`. `people` are names known from the incident (deploy actors,
/// approvers); a mention of one followed by a cause verb is flagged, as is a
/// capitalized name that is not the first word of a sentence, or an @handle.
pub fn check(text: &str, people: &[String]) -> Vec<Finding> {
    let words = words(text);
    let mut findings = Vec::new();
    for i in 0..words.len() {
        for p in PHRASES {
            if i + p.words.len() > words.len() {
                continue;
            }
            let ok = p
                .words
                .iter()
                .enumerate()
                .all(|(k, w)| *w == "*" || words[i + k].lower == *w);
            if ok {
                let last = &words[i + p.words.len() - 1];
                findings.push(finding(
                    text,
                    words[i].start,
                    last.end,
                    p.rule,
                    p.message.to_string(),
                    p.suggestion.to_string(),
                ));
            }
        }
        // "<Name>'s fault"
        if words[i].lower.ends_with("'s") || words[i].lower.ends_with("’s") {
            if let Some(next) = words.get(i + 1) {
                if next.lower == "fault" || next.lower == "mistake" {
                    findings.push(finding(
                        text,
                        words[i].start,
                        next.end,
                        "fault",
                        format!(
                            "\"{}\" makes a person the cause",
                            &text[words[i].start..next.end]
                        ),
                        "describe the contributing factors: what in the system allowed this".into(),
                    ));
                }
            }
        }
        // "<person> broke/caused/forgot …"
        if let Some(verb) = words.get(i + 1) {
            if CAUSE_VERBS.contains(&verb.lower.as_str()) && is_person(&words, i, people) {
                findings.push(finding(
                    text,
                    words[i].start,
                    verb.end,
                    "named-cause",
                    format!("\"{}\" names a person as the cause of a failure", &text[words[i].start..verb.end]),
                    "name the change or condition instead, e.g. \"the v2 deploy removed the timeout\" or \"the runbook step was missing\"".into(),
                ));
            }
        }
    }
    findings.sort_by_key(|f| (f.start, f.end));
    findings.dedup_by(|a, b| a.start == b.start && a.end == b.end);
    findings
}

fn is_person(words: &[Word], i: usize, people: &[String]) -> bool {
    let w = &words[i];
    let bare = w.raw.trim_end_matches("'s");
    if bare.starts_with('@') && bare.len() > 1 {
        return true;
    }
    if people.iter().any(|p| {
        p.eq_ignore_ascii_case(bare)
            || p.split_whitespace()
                .any(|part| part.eq_ignore_ascii_case(bare))
    }) {
        return true;
    }
    let capitalized = bare.chars().next().is_some_and(char::is_uppercase)
        && bare.chars().skip(1).all(|c| c.is_lowercase())
        && bare.len() > 1;
    capitalized && !w.sentence_start && !NOT_NAMES.contains(&w.lower.as_str())
}

struct Word<'a> {
    raw: &'a str,
    lower: String,
    start: usize,
    end: usize,
    sentence_start: bool,
}

fn words(text: &str) -> Vec<Word<'_>> {
    let mut out = Vec::new();
    let mut sentence_start = true;
    let mut start = None;
    let is_word =
        |c: char| c.is_alphanumeric() || c == '\'' || c == '’' || c == '@' || c == '-' || c == '_';
    let mut push = |s: usize, e: usize, sentence_start: &mut bool| {
        let raw = &text[s..e];
        let raw = raw.trim_matches(|c| c == '\'' || c == '-');
        if raw.is_empty() {
            return;
        }
        let s2 = s + text[s..e].find(raw).unwrap_or(0);
        out.push(Word {
            raw,
            lower: raw.to_lowercase(),
            start: s2,
            end: s2 + raw.len(),
            sentence_start: *sentence_start,
        });
        *sentence_start = false;
    };
    for (i, c) in text.char_indices() {
        if is_word(c) {
            if start.is_none() {
                start = Some(i);
            }
        } else {
            if let Some(s) = start.take() {
                push(s, i, &mut sentence_start);
            }
            if matches!(c, '.' | '!' | '?' | '\n' | ':' | '#' | '*' | '-' | '|') {
                sentence_start = true;
            }
        }
    }
    if let Some(s) = start {
        push(s, text.len(), &mut sentence_start);
    }
    out
}

fn finding(
    text: &str,
    start: usize,
    end: usize,
    rule: &'static str,
    message: String,
    suggestion: String,
) -> Finding {
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Finding {
        start,
        end,
        line,
        column,
        text: text[start..end].to_string(),
        rule,
        message,
        suggestion,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(&'static str, String)> {
        check(text, &["mallory".to_string(), "Alice Smith".to_string()])
            .into_iter()
            .map(|f| (f.rule, f.text))
            .collect()
    }

    #[test]
    fn flags_blaming_language() {
        assert_eq!(
            rules("The outage was caused by human error."),
            [("human-error", "human error".into())]
        );
        assert_eq!(
            rules("Ops should have checked the dashboard."),
            [("counterfactual", "should have".into())]
        );
        assert_eq!(
            rules("It was Bob's fault."),
            [("fault", "Bob's fault".into())]
        );
        assert_eq!(
            rules("A careless change to the config."),
            [("judgement", "careless".into())]
        );
        assert_eq!(
            rules("Then mallory broke the build."),
            [("named-cause", "mallory broke".into())]
        );
        assert_eq!(
            rules("Alice forgot to drain the node."),
            [
                ("named-cause", "Alice forgot".into()),
                ("counterfactual", "forgot to".into())
            ]
        );
        assert_eq!(
            rules("After the review, @dave caused the outage."),
            [("named-cause", "@dave caused".into())]
        );
        assert_eq!(
            rules("At 14:02 Carol missed the page."),
            [("named-cause", "Carol missed".into())]
        );
    }

    #[test]
    fn leaves_neutral_text_alone() {
        for text in [
            "The v2 deploy removed the client timeout; errors rose seven minutes later.",
            "The deploy caused a spike in 5xx responses.",
            "Alice approved the rollback at 14:10 and errors fell.",
            "The runbook had no step for draining the node.",
            "We saw the error rate in the dashboard within two minutes.",
            "Checkout broke for 12% of requests.",
            "Error budget burn was 4x.",
        ] {
            assert_eq!(rules(text), Vec::<(&str, String)>::new(), "{text}");
        }
    }

    #[test]
    fn positions_are_lines_and_columns() {
        let f = check("# Summary\n\nIt was human error.", &[]);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].line, f[0].column), (3, 8));
        assert_eq!(
            &"# Summary\n\nIt was human error."[f[0].start..f[0].end],
            "human error"
        );
        assert!(!f[0].suggestion.is_empty());
    }
}
