//! The blameless check: finds language that blames people ("human error",
//! "should have", "X's fault", a named person as the cause of a failure, …) and
//! suggests a system-focused wording. It informs; it never blocks a save.
//!
//! It reads the text once, word by word, keeping only the last few words, so
//! its time and memory are linear in the text whatever the text holds. A
//! finding carries positions and a bounded excerpt, never a copy of its line,
//! and at most [`MAX_FINDINGS`] are kept (the rest are counted).

use serde::Serialize;
use std::collections::HashSet;

/// Findings kept per check; more are counted in [`Lint::total`].
pub const MAX_FINDINGS: usize = 200;
/// Characters of context shown on each side of a finding in its excerpt.
pub const EXCERPT_CONTEXT_CHARS: usize = 60;
/// Characters of a finding's own text (a matched "word" can be any length).
pub const MAX_TEXT_CHARS: usize = 80;
/// Names of people considered per check, and characters per name.
pub const MAX_PEOPLE: usize = 100;
pub const MAX_PERSON_CHARS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Byte offsets into the text.
    pub start: usize,
    pub end: usize,
    /// 1-based line and column (in characters).
    pub line: usize,
    pub column: usize,
    /// The words found (at most [`MAX_TEXT_CHARS`], cut with "…").
    pub text: String,
    /// The finding in its line: up to [`EXCERPT_CONTEXT_CHARS`] on each side.
    pub excerpt: String,
    pub rule: &'static str,
    pub message: String,
    pub suggestion: String,
}

/// What one check found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lint {
    /// The first [`MAX_FINDINGS`] findings, in text order.
    pub findings: Vec<Finding>,
    /// Every finding, kept or not.
    pub total: usize,
    /// Whether findings were left out.
    pub truncated: bool,
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
    Phrase { rule: "counterfactual", words: &["if", "we", "had"], message: "\"if we had …\" imagines another past instead of describing this one", suggestion: "describe what was known and done at the time, and turn the missing safeguard into an action item" },
    Phrase { rule: "counterfactual", words: &["if", "i", "had"], message: "\"if I had …\" imagines another past instead of describing this one", suggestion: "describe what was known and done at the time, and turn the missing safeguard into an action item" },
    Phrase { rule: "counterfactual", words: &["if", "they", "had"], message: "\"if they had …\" imagines another past instead of describing this one", suggestion: "describe what was known and done at the time, and turn the missing safeguard into an action item" },
    Phrase { rule: "counterfactual", words: &["if", "he", "had"], message: "\"if he had …\" imagines another past and points at a person", suggestion: "describe what was known and done at the time, and turn the missing safeguard into an action item" },
    Phrase { rule: "counterfactual", words: &["if", "she", "had"], message: "\"if she had …\" imagines another past and points at a person", suggestion: "describe what was known and done at the time, and turn the missing safeguard into an action item" },
    Phrase { rule: "counterfactual", words: &["if", "only"], message: "\"if only\" judges with hindsight", suggestion: "name the safeguard that was missing, as an action item" },
    Phrase { rule: "counterfactual", words: &["would", "not", "have"], message: "\"would not have …\" judges with hindsight", suggestion: "describe what happened and which safeguard would catch it next time" },
    Phrase { rule: "counterfactual", words: &["wouldn't", "have"], message: "\"wouldn't have …\" judges with hindsight", suggestion: "describe what happened and which safeguard would catch it next time" },
    Phrase { rule: "counterfactual", words: &["could", "have", "been", "avoided"], message: "\"could have been avoided\" judges with hindsight", suggestion: "name what would avoid it next time, as an action item" },
    Phrase { rule: "counterfactual", words: &["would", "have", "been", "avoided"], message: "\"would have been avoided\" judges with hindsight", suggestion: "name what would avoid it next time, as an action item" },
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

/// Capitalized possessives that are systems, not people ("Monday's deploy").
const NOT_OWNERS: &[&str] = &[
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "today",
    "yesterday",
    "yesterday's",
    "team",
    "company",
    "kubernetes",
    "postgres",
    "postgresql",
    "redis",
    "github",
    "aws",
    "google",
    "firebreak",
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
/// Only the first [`MAX_PEOPLE`] names are used.
pub fn check(text: &str, people: &[String]) -> Lint {
    let people = People::new(people);
    let mut out = Collector {
        text,
        findings: Vec::new(),
        total: 0,
        last: None,
    };
    // The last four words: the longest phrase is three words, and a cause
    // verb is looked at one word ahead. Each word is looked at once, as the
    // first of the window.
    let mut window: Vec<Word> = Vec::with_capacity(4);
    words(text, |w| {
        window.push(w);
        if window.len() == 4 {
            look(text, &window, &people, &mut out);
            window.remove(0);
        }
    });
    while !window.is_empty() {
        look(text, &window, &people, &mut out);
        window.remove(0);
    }
    Lint {
        truncated: out.total > out.findings.len(),
        total: out.total,
        findings: out.findings,
    }
}

/// The findings that start at `w[0]` (`w` holds it and up to three words after).
fn look(text: &str, w: &[Word], people: &People, out: &mut Collector<'_>) {
    let mut here: Vec<(usize, usize, Kind)> = Vec::new();
    let first = &w[0];
    for (n, p) in PHRASES.iter().enumerate() {
        if p.words.len() > w.len() {
            continue;
        }
        let ok = p
            .words
            .iter()
            .enumerate()
            .all(|(k, pw)| *pw == "*" || w[k].is(text, pw));
        if ok {
            here.push((first.start, w[p.words.len() - 1].end, Kind::Phrase(n)));
        }
    }
    let raw = first.raw(text);
    // "<Name>'s fault"
    if raw.ends_with("'s") || raw.ends_with("’s") || raw.ends_with("'S") || raw.ends_with("’S")
    {
        if let Some(next) = w.get(1) {
            if next.is(text, "fault") || next.is(text, "mistake") {
                here.push((first.start, next.end, Kind::Fault));
            }
        }
    }
    // "<person> broke/caused/forgot …"
    if let Some(verb) = w.get(1) {
        if CAUSE_VERBS.iter().any(|v| verb.is(text, v)) && people.is_person(text, first) {
            here.push((first.start, verb.end, Kind::NamedCause));
        }
    }
    let cause_verb = |k: usize| {
        w.get(k)
            .filter(|v| CAUSE_VERBS.iter().any(|c| v.is(text, c)))
    };
    // "Carol's deploy broke …", "Carol's change to the pool caused …": a
    // person's thing made the cause (the verb within three words).
    if possessive(raw) && people.is_owner(text, first) {
        if let Some(verb) = (2..w.len()).find_map(cause_verb) {
            here.push((first.start, verb.end, Kind::Possessive));
        }
    }
    // "She broke …", "he accidentally caused …": a person as the subject.
    if PRONOUNS.iter().any(|p| first.is(text, p)) {
        if let Some(verb) = (1..w.len().min(3)).find_map(cause_verb) {
            here.push((first.start, verb.end, Kind::Pronoun));
        }
    }
    here.sort_by_key(|(s, e, _)| (*s, *e));
    for (start, end, kind) in here {
        out.push(first, start, end, kind);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Phrase(usize),
    Fault,
    NamedCause,
    Possessive,
    Pronoun,
}

/// Pronouns that, as the subject of a cause verb, point at a person.
const PRONOUNS: &[&str] = &["he", "she"];

fn possessive(raw: &str) -> bool {
    raw.len() > 2 && (raw.ends_with("'s") || raw.ends_with("’s"))
}

struct Collector<'a> {
    text: &'a str,
    findings: Vec<Finding>,
    total: usize,
    last: Option<(usize, usize)>,
}

impl Collector<'_> {
    fn push(&mut self, at: &Word, start: usize, end: usize, kind: Kind) {
        if self.last == Some((start, end)) {
            return;
        }
        self.last = Some((start, end));
        self.total += 1;
        if self.findings.len() >= MAX_FINDINGS {
            return;
        }
        let text = bounded(&self.text[start..end], MAX_TEXT_CHARS);
        let (rule, message, suggestion) = match kind {
            Kind::Phrase(n) => (
                PHRASES[n].rule,
                PHRASES[n].message.to_string(),
                PHRASES[n].suggestion.to_string(),
            ),
            Kind::Fault => (
                "fault",
                format!("\"{text}\" makes a person the cause"),
                "describe the contributing factors: what in the system allowed this".into(),
            ),
            Kind::NamedCause => (
                "named-cause",
                format!("\"{text}\" names a person as the cause of a failure"),
                "name the change or condition instead, e.g. \"the v2 deploy removed the timeout\" or \"the runbook step was missing\"".into(),
            ),
            Kind::Possessive => (
                "named-cause",
                format!("\"{text}\" ties the failure to a person through what they made"),
                "name the change by what it is, e.g. \"the cart v43 deploy broke checkout\"".into(),
            ),
            Kind::Pronoun => (
                "named-cause",
                format!("\"{text}\" makes a person the subject of the failure"),
                "make the change or the condition the subject, e.g. \"the migration dropped the index\"".into(),
            ),
        };
        self.findings.push(Finding {
            start,
            end,
            line: at.line,
            column: at.column,
            excerpt: excerpt(self.text, start, end),
            text,
            rule,
            message,
            suggestion,
        });
    }
}

/// The lowercase names (and parts of names) of the incident's people.
struct People(HashSet<String>);

impl People {
    fn new(people: &[String]) -> People {
        let mut set = HashSet::new();
        for p in people.iter().take(MAX_PEOPLE) {
            let p: String = p.chars().take(MAX_PERSON_CHARS).collect();
            let p = p.to_lowercase();
            for part in p.split_whitespace() {
                set.insert(part.to_string());
            }
            set.insert(p);
        }
        People(set)
    }

    /// A possessive's owner is a person: a known one (also at the start of a
    /// sentence: "Carol's deploy"), an @handle, or a capitalized name inside
    /// a sentence ("then Carol's change"; at a sentence's start a capital
    /// says nothing: "Checkout's deploy").
    fn is_owner(&self, text: &str, w: &Word) -> bool {
        let raw = w.raw(text);
        let bare = raw
            .strip_suffix("'s")
            .or_else(|| raw.strip_suffix("’s"))
            .unwrap_or(raw);
        if bare.starts_with('@') && bare.len() > 1 {
            return true;
        }
        if self.0.contains(&bare.to_lowercase()) {
            return true;
        }
        let capitalized = bare.chars().next().is_some_and(char::is_uppercase)
            && bare.chars().skip(1).all(|c| c.is_lowercase())
            && bare.chars().count() > 1;
        capitalized
            && !w.sentence_start
            && !NOT_NAMES.iter().any(|n| bare.eq_ignore_ascii_case(n))
            && !NOT_OWNERS.iter().any(|n| bare.eq_ignore_ascii_case(n))
    }

    fn is_person(&self, text: &str, w: &Word) -> bool {
        let raw = w.raw(text);
        let bare = raw.trim_end_matches("'s");
        if bare.starts_with('@') && bare.len() > 1 {
            return true;
        }
        if bare.len() <= MAX_PERSON_CHARS * 4 && self.0.contains(&bare.to_lowercase()) {
            return true;
        }
        let capitalized = bare.chars().next().is_some_and(char::is_uppercase)
            && bare.chars().skip(1).all(|c| c.is_lowercase())
            && bare.len() > 1;
        capitalized && !w.sentence_start && !NOT_NAMES.iter().any(|n| w.is(text, n))
    }
}

/// A word: where it is, and whether a sentence starts with it.
struct Word {
    start: usize,
    end: usize,
    line: usize,
    column: usize,
    sentence_start: bool,
}

impl Word {
    fn raw<'t>(&self, text: &'t str) -> &'t str {
        &text[self.start..self.end]
    }

    /// Whether the word is `lower` (an ASCII word), ignoring case.
    fn is(&self, text: &str, lower: &str) -> bool {
        self.raw(text).eq_ignore_ascii_case(lower)
    }
}

/// Calls `each` with every word of `text`, in order, in one pass.
fn words(text: &str, mut each: impl FnMut(Word)) {
    let is_word =
        |c: char| c.is_alphanumeric() || c == '\'' || c == '’' || c == '@' || c == '-' || c == '_';
    let mut sentence_start = true;
    // The word being read: its start and the line and column there.
    let mut current: Option<(usize, usize, usize)> = None;
    let (mut line, mut column) = (1usize, 1usize);
    let mut emit = |s: usize, e: usize, line: usize, column: usize, sentence_start: &mut bool| {
        let raw = &text[s..e];
        let lead = raw.len() - raw.trim_start_matches(['\'', '-']).len();
        let trail = raw.len() - raw.trim_end_matches(['\'', '-']).len();
        if lead + trail >= raw.len() {
            return;
        }
        each(Word {
            start: s + lead,
            end: e - trail,
            line,
            // The leading characters trimmed are ASCII: one column each.
            column: column + lead,
            sentence_start: *sentence_start,
        });
        *sentence_start = false;
    };
    for (i, c) in text.char_indices() {
        if is_word(c) {
            if current.is_none() {
                current = Some((i, line, column));
            }
        } else {
            if let Some((s, l, col)) = current.take() {
                emit(s, i, l, col, &mut sentence_start);
            }
            if matches!(c, '.' | '!' | '?' | '\n' | ':' | '#' | '*' | '-' | '|') {
                sentence_start = true;
            }
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    if let Some((s, l, col)) = current {
        emit(s, text.len(), l, col, &mut sentence_start);
    }
}

/// `s`, cut to `max` characters with "…".
fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The finding in its line, with up to [`EXCERPT_CONTEXT_CHARS`] on each side
/// (reading no further than that, whatever the line's length).
fn excerpt(text: &str, start: usize, end: usize) -> String {
    let mut from = start;
    for (n, (i, c)) in text[..start].char_indices().rev().enumerate() {
        if c == '\n' || n == EXCERPT_CONTEXT_CHARS {
            break;
        }
        from = i;
    }
    let mut to = end;
    for (n, (i, c)) in text[end..].char_indices().enumerate() {
        if c == '\n' || n == EXCERPT_CONTEXT_CHARS {
            break;
        }
        to = end + i + c.len_utf8();
    }
    let middle = bounded(&text[start..end], MAX_TEXT_CHARS);
    let lead = if from > 0 && !text[..from].ends_with('\n') {
        "…"
    } else {
        ""
    };
    let tail = if to < text.len() && !text[to..].starts_with('\n') {
        "…"
    } else {
        ""
    };
    format!(
        "{lead}{}{middle}{}{tail}",
        &text[from..start],
        &text[end..to]
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(&'static str, String)> {
        check(text, &["mallory".to_string(), "Alice Smith".to_string()])
            .findings
            .into_iter()
            .map(|f| (f.rule, f.text))
            .collect()
    }

    #[test]
    fn flags_blaming_language_counterfactuals_possessives_and_pronouns() {
        for (text, want) in [
            (
                "The outage was caused by human error.",
                &[("human-error", "human error")][..],
            ),
            (
                "Ops should have checked the dashboard.",
                &[("counterfactual", "should have")][..],
            ),
            ("It was Bob's fault.", &[("fault", "Bob's fault")][..]),
            (
                "A careless change to the config.",
                &[("judgement", "careless")][..],
            ),
            (
                "Then mallory broke the build.",
                &[("named-cause", "mallory broke")][..],
            ),
            (
                "Alice forgot to drain the node.",
                &[
                    ("named-cause", "Alice forgot"),
                    ("counterfactual", "forgot to"),
                ][..],
            ),
            (
                "After the review, @dave caused the outage.",
                &[("named-cause", "@dave caused")][..],
            ),
            (
                "At 14:02 Carol missed the page.",
                &[("named-cause", "Carol missed")][..],
            ),
            (
                "Then Carol's config change caused the outage.",
                &[("named-cause", "Carol's config change caused")][..],
            ),
            (
                "She broke the cart service.",
                &[("named-cause", "She broke")][..],
            ),
            (
                "He accidentally caused a loop.",
                &[("named-cause", "He accidentally caused")][..],
            ),
            (
                "If we had a canary, this would not have happened.",
                &[
                    ("counterfactual", "If we had"),
                    ("counterfactual", "would not have"),
                ][..],
            ),
            (
                "The outage could have been avoided.",
                &[("counterfactual", "could have been avoided")][..],
            ),
        ] {
            let want: Vec<(&str, String)> = want.iter().map(|(r, t)| (*r, t.to_string())).collect();
            assert_eq!(rules(text), want, "{text}");
        }
    }

    #[test]
    fn a_known_person_is_named_at_the_start_of_a_sentence() {
        let carol = check("Carol's deploy broke checkout.", &["carol".to_string()]);
        assert_eq!(
            carol
                .findings
                .iter()
                .map(|f| (f.rule, f.text.clone()))
                .collect::<Vec<_>>(),
            [("named-cause", "Carol's deploy broke".to_string())],
            "a known person, at the start of a sentence"
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
            "Monday's deploy broke checkout.",
            "Checkout's v2 deploy broke payments for 12 minutes.",
            "The team's runbook had no drain step.",
            "If the gate had a lower threshold, the canary stops at 5%.",
            "They deployed at 14:00; the deploy broke checkout.",
        ] {
            assert_eq!(rules(text), Vec::<(&str, String)>::new(), "{text}");
        }
    }

    #[test]
    fn positions_are_lines_and_columns() {
        let f = check("# Summary\n\nIt was human error.", &[]).findings;
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].line, f[0].column), (3, 8));
        assert_eq!(
            &"# Summary\n\nIt was human error."[f[0].start..f[0].end],
            "human error"
        );
        assert!(!f[0].suggestion.is_empty());
    }

    #[test]
    fn a_long_line_of_blame_gives_bounded_findings() {
        // The attack of issue 23: one 200 KB line of blame words. Every
        // finding is counted, a bounded number kept, each with a short excerpt
        // instead of its line.
        let line = "human error should have ".repeat(200 * 1024 / 24);
        let lint = check(&line, &[]);
        assert_eq!(lint.total, 2 * (200 * 1024 / 24));
        assert_eq!(lint.findings.len(), MAX_FINDINGS);
        assert!(lint.truncated);
        for f in &lint.findings {
            assert!(f.excerpt.chars().count() <= 2 * EXCERPT_CONTEXT_CHARS + MAX_TEXT_CHARS + 2);
            assert!(f.excerpt.contains(&f.text), "{f:?}");
            assert_eq!(f.line, 1);
            assert_eq!(f.column, f.start + 1);
        }
    }

    #[test]
    fn a_huge_word_is_cut_in_the_finding() {
        let text = format!("They blame {} for it.", "x".repeat(100_000));
        let lint = check(&text, &[]);
        assert_eq!(lint.total, 1);
        let f = &lint.findings[0];
        assert_eq!((f.start, f.end), (5, 5 + "blame ".len() + 100_000));
        assert!(f.text.ends_with('…'));
        assert_eq!(f.text.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(f.excerpt.starts_with("They blame x"));
    }

    #[test]
    fn excerpts_stay_in_their_line() {
        let text = "Intro line.\nIt was human error, said the log.\nNext line.";
        let f = &check(text, &[]).findings[0];
        assert_eq!(f.excerpt, "It was human error, said the log.");
        assert_eq!((f.line, f.column), (2, 8));
    }

    #[test]
    fn many_people_are_bounded() {
        let people: Vec<String> = (0..10_000).map(|i| format!("person{i}")).collect();
        // Only the first MAX_PEOPLE names count.
        assert_eq!(check("Then person5 broke it.", &people).total, 1);
        assert_eq!(check("Then person9999 broke it.", &people).total, 0);
    }
}
