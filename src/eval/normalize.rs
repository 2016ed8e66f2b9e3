//! Text normalisation before scoring: a port of OpenAI Whisper's `BasicTextNormalizer` and
//! `EnglishTextNormalizer` (whisper/normalizers/{basic,english}.py in openai-whisper 20250625,
//! MIT, Copyright (c) 2022 OpenAI; the same code ships in Hugging Face transformers'
//! `tokenization_whisper`). `tests/data/normalizer_cases.json`, written by
//! `scripts/jiwer_reference.py` with the Python originals, pins the port.
//!
//! Both normalisers return the Python result with leading and trailing whitespace trimmed (the
//! Python versions may leave one space at either end; scoring splits on whitespace, and jiwer's
//! CER strips, so nothing downstream sees the difference).
//!
//! `basic` (Whisper's `BasicTextNormalizer()`, `remove_diacritics=False`):
//! lower-case; drop text between `[...]` or `<...>` and between `(...)`; NFKC; every character
//! whose Unicode category is a mark (M*), symbol (S*) or punctuation (P*) becomes a space;
//! whitespace runs collapse to one space. Apostrophes are punctuation, so `don't` becomes
//! `don t` (two words): that is Whisper's and Hugging Face's choice, kept so our numbers compare
//! with theirs. Diacritics survive as precomposed letters (`café` stays `café`).
//!
//! `english` (Whisper's `EnglishTextNormalizer`), in order:
//! lower-case; drop bracketed and parenthesised text; drop the fillers hmm, mm, mhm, mmm, uh, um;
//! join a space before an apostrophe; expand contractions and titles (`won't` → `will not`,
//! `can't` → `can not`, `mr` → `mister`, `n't` → ` not`, `'re` → ` are`, `'s` → ` is`, ... the
//! full list is [`REPLACERS`]); drop commas between digits and periods not followed by a digit;
//! NFKD, drop combining marks (diacritics) and map œ æ ø ß ð þ đ ł to ASCII; other marks,
//! symbols and punctuation become spaces except `. % $ ¢ € £`; spelled numbers become digits
//! ([`EnglishNumberNormalizer`]: "twenty one" → 21, "one oh one" → 101, "two point five" → 2.5,
//! "ten thousand dollars" → $10000, "fifty per cent" → 50%, ordinals "twenty first" → 21st,
//! "double seven" → 77; "one"/"ones" stay words); British spellings become American with the
//! 1,739-entry table `english.json` from openai-whisper (committed beside this file with its
//! licence); leftover currency/period/percent symbols not attached to a number become spaces;
//! whitespace collapses.
//!
//! Known differences from the Python original: digits of scripts other than ASCII (e.g. `٣`)
//! are words to us, while Python's `\d` and `Fraction` read them as numbers; Python's `\s` also
//! matches the ASCII separators U+001C-U+001F, ours does not; the Unicode tables differ in
//! version (Python 3.11 has Unicode 14), which only matters for recently assigned characters.

use std::collections::HashMap;
use std::sync::LazyLock;

use num_bigint::BigUint;
use regex::{Captures, Regex};
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Which normaliser to apply to references and hypotheses before scoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalizer {
    /// Score the text as it is (words are split on whitespace).
    None,
    /// Whisper's `BasicTextNormalizer`: lower-case, no punctuation/symbols, collapsed whitespace.
    #[default]
    Basic,
    /// Whisper's `EnglishTextNormalizer`: basic plus contractions, numbers, spellings.
    English,
    /// Whisper's `BasicTextNormalizer(remove_diacritics=True)`: basic, and `é` scores as `e`.
    BasicRemoveDiacritics,
}

impl Normalizer {
    pub fn apply(self, s: &str) -> String {
        match self {
            Normalizer::None => s.to_string(),
            Normalizer::Basic => basic(s),
            Normalizer::English => english(s),
            Normalizer::BasicRemoveDiacritics => basic_remove_diacritics(s),
        }
    }
}

fn re(p: &str) -> Regex {
    Regex::new(p).unwrap_or_else(|e| panic!("bad regex {p}: {e}"))
}

static BRACKETS: LazyLock<Regex> = LazyLock::new(|| re(r"[<\[][^>\]]*[>\]]"));
static PARENS: LazyLock<Regex> = LazyLock::new(|| re(r"\(([^)]+?)\)"));
static SPACES: LazyLock<Regex> = LazyLock::new(|| re(r"\s+"));
static MSP: LazyLock<Regex> = LazyLock::new(|| re(r"[\p{M}\p{S}\p{P}]"));
static MN: LazyLock<Regex> = LazyLock::new(|| re(r"^\p{Mn}$"));
static MSP_OR_DIACRITIC: LazyLock<Regex> = LazyLock::new(|| {
    let extra: String = ADDITIONAL_DIACRITICS.iter().map(|(c, _)| *c).collect();
    re(&format!(r"[\p{{M}}\p{{S}}\p{{P}}{extra}]"))
});

/// Letters that NFKD does not decompose but Whisper maps to ASCII (basic.py).
const ADDITIONAL_DIACRITICS: [(char, &str); 16] = [
    ('œ', "oe"),
    ('Œ', "OE"),
    ('ø', "o"),
    ('Ø', "O"),
    ('æ', "ae"),
    ('Æ', "AE"),
    ('ß', "ss"),
    ('ẞ', "SS"),
    ('đ', "d"),
    ('Đ', "D"),
    ('ð', "d"),
    ('Ð', "D"),
    ('þ', "th"),
    ('Þ', "th"),
    ('ł', "l"),
    ('Ł', "L"),
];

/// basic.py `remove_symbols`: NFKC, then marks, symbols and punctuation become spaces.
fn remove_symbols(s: &str) -> String {
    let nfkc: String = s.nfkc().collect();
    MSP.replace_all(&nfkc, " ").into_owned()
}

/// basic.py `remove_symbols_and_diacritics`: NFKD, drop nonspacing marks, map a few letters to
/// ASCII, and turn other marks, symbols and punctuation into spaces except those in `keep`.
fn remove_symbols_and_diacritics(s: &str, keep: &str) -> String {
    let nfkd: String = s.nfkd().collect();
    MSP_OR_DIACRITIC
        .replace_all(&nfkd, |caps: &Captures| {
            let m = &caps[0];
            let c = m.chars().next().unwrap();
            if keep.contains(c) {
                m.to_string()
            } else if let Some((_, ascii)) = ADDITIONAL_DIACRITICS.iter().find(|(d, _)| *d == c) {
                ascii.to_string()
            } else if MN.is_match(m) {
                String::new()
            } else {
                " ".to_string()
            }
        })
        .into_owned()
}

/// Whisper's `BasicTextNormalizer()` (see the module docs), trimmed.
pub fn basic(s: &str) -> String {
    basic_with(s, remove_symbols)
}

/// Whisper's `BasicTextNormalizer(remove_diacritics=True)`, trimmed: as [`basic`], but NFKD
/// with the diacritics dropped (and œ æ ø ß ð þ đ ł spelled in ASCII).
pub fn basic_remove_diacritics(s: &str) -> String {
    basic_with(s, |s| remove_symbols_and_diacritics(s, ""))
}

/// basic.py `BasicTextNormalizer.__call__` with its symbol remover.
fn basic_with(s: &str, remove: impl Fn(&str) -> String) -> String {
    let s = s.to_lowercase();
    let s = BRACKETS.replace_all(&s, "");
    let s = PARENS.replace_all(&s, "");
    let s = remove(&s).to_lowercase();
    SPACES.replace_all(&s, " ").trim().to_string()
}

/// Contractions, titles and perfect tenses expanded by Whisper's English normaliser, applied in
/// this order (english.py `EnglishTextNormalizer.replacers`).
pub const REPLACERS: [(&str, &str); 49] = [
    // common contractions
    (r"\bwon't\b", "will not"),
    (r"\bcan't\b", "can not"),
    (r"\blet's\b", "let us"),
    (r"\bain't\b", "aint"),
    (r"\by'all\b", "you all"),
    (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"),
    (r"\bgonna\b", "going to"),
    (r"\bi'ma\b", "i am going to"),
    (r"\bimma\b", "i am going to"),
    (r"\bwoulda\b", "would have"),
    (r"\bcoulda\b", "could have"),
    (r"\bshoulda\b", "should have"),
    (r"\bma'am\b", "madam"),
    // contractions in titles/prefixes
    (r"\bmr\b", "mister "),
    (r"\bmrs\b", "missus "),
    (r"\bst\b", "saint "),
    (r"\bdr\b", "doctor "),
    (r"\bprof\b", "professor "),
    (r"\bcapt\b", "captain "),
    (r"\bgov\b", "governor "),
    (r"\bald\b", "alderman "),
    (r"\bgen\b", "general "),
    (r"\bsen\b", "senator "),
    (r"\brep\b", "representative "),
    (r"\bpres\b", "president "),
    (r"\brev\b", "reverend "),
    (r"\bhon\b", "honorable "),
    (r"\basst\b", "assistant "),
    (r"\bassoc\b", "associate "),
    (r"\blt\b", "lieutenant "),
    (r"\bcol\b", "colonel "),
    (r"\bjr\b", "junior "),
    (r"\bsr\b", "senior "),
    (r"\besq\b", "esquire "),
    // perfect tenses, ideally it should be any past participles, but it's harder..
    (r"'d been\b", " had been"),
    (r"'s been\b", " has been"),
    (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"),
    (r"'d done\b", " had done"), // "'s done" is ambiguous
    (r"'s got\b", " has got"),
    // general contractions
    (r"n't\b", " not"),
    (r"'re\b", " are"),
    (r"'s\b", " is"),
    (r"'d\b", " would"),
    (r"'ll\b", " will"),
    (r"'t\b", " not"),
    (r"'ve\b", " have"),
    (r"'m\b", " am"),
];

struct English {
    fillers: Regex,
    space_apostrophe: Regex,
    replacers: Vec<(Regex, &'static str)>,
    digit_comma: Regex,
    period: Regex,
    symbol_not_before_digit: Regex,
    percent_not_after_digit: Regex,
    numbers: EnglishNumberNormalizer,
    spellings: HashMap<String, String>,
}

static ENGLISH: LazyLock<English> = LazyLock::new(|| English {
    fillers: re(r"\b(hmm|mm|mhm|mmm|uh|um)\b"),
    space_apostrophe: re(r"\s+'"),
    replacers: REPLACERS.iter().map(|(p, r)| (re(p), *r)).collect(),
    digit_comma: re(r"(\d),(\d)"),
    period: re(r"\.([^0-9]|$)"),
    symbol_not_before_digit: re(r"[.$¢€£]([^0-9])"),
    percent_not_after_digit: re(r"([^0-9])%"),
    numbers: EnglishNumberNormalizer::new(),
    spellings: serde_json::from_str(include_str!("english.json")).expect("english.json is a string map"),
});

/// British → American spellings (openai-whisper's english.json, from the tysto.com list).
pub fn spelling_table() -> &'static HashMap<String, String> {
    &ENGLISH.spellings
}

/// Whisper's `EnglishTextNormalizer` (see the module docs), trimmed.
pub fn english(s: &str) -> String {
    let e = &*ENGLISH;
    let s = s.to_lowercase();
    let s = BRACKETS.replace_all(&s, "");
    let s = PARENS.replace_all(&s, "");
    let s = e.fillers.replace_all(&s, "");
    let mut s = e.space_apostrophe.replace_all(&s, "'").into_owned();
    for (pattern, replacement) in &e.replacers {
        s = pattern.replace_all(&s, *replacement).into_owned();
    }
    let s = e.digit_comma.replace_all(&s, "${1}${2}");
    let s = e.period.replace_all(&s, " ${1}");
    let s = remove_symbols_and_diacritics(&s, ".%$¢€£");
    let s = e.numbers.normalize(&s);
    let s = s.split_whitespace().map(|w| e.spellings.get(w).map(String::as_str).unwrap_or(w)).collect::<Vec<_>>();
    let s = s.join(" ");
    let s = e.symbol_not_before_digit.replace_all(&s, " ${1}");
    let s = e.percent_not_after_digit.replace_all(&s, "${1} ");
    SPACES.replace_all(&s, " ").trim().to_string()
}

/// A number being built: Python's `int` or `str` value in english.py.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(BigUint),
    Str(String),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::Int(i) => i.to_string(),
            Value::Str(s) => s.clone(),
        }
    }
    /// Python's `str(value or "")`: 0 and "" are falsy.
    fn text_or_empty(v: &Option<Value>) -> String {
        match v {
            None => String::new(),
            Some(Value::Int(i)) if *i == BigUint::ZERO => String::new(),
            Some(v) => v.text(),
        }
    }
}

/// A decimal literal as Python's `Fraction(str)` reads it: `digits[.digits]`, `.5`, `1.`.
/// Returns numerator and the power of ten of the denominator (not reduced).
fn parse_decimal(s: &str) -> Option<(BigUint, usize)> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let all = format!("{int}{frac}");
    Some((all.parse().ok()?, frac.len()))
}

/// `Fraction(s) * 10^power` when that is an integer.
fn integer_times_power_of_ten(s: &str, power: usize) -> Option<BigUint> {
    let (num, scale) = parse_decimal(s)?;
    let num = num * BigUint::from(10u32).pow(power as u32);
    let den = BigUint::from(10u32).pow(scale as u32);
    (&num % &den == BigUint::ZERO).then(|| num / den)
}

fn is_arabic_number(s: &str) -> bool {
    static RE: LazyLock<Regex> = LazyLock::new(|| re(r"^[0-9]+(\.[0-9]+)?$"));
    RE.is_match(s)
}

/// Whisper's `EnglishNumberNormalizer`: spelled-out numbers to arabic numbers, keeping suffixes
/// (`1960s`, `21st`), currency words after a number as a prefix symbol (`$20`), `percent` as
/// `%`, successive single digits as nominal (`one oh one` → 101).
pub struct EnglishNumberNormalizer {
    zeros: Vec<&'static str>,
    ones: HashMap<String, u32>,
    ones_suffixed: HashMap<String, (u32, &'static str)>,
    tens: HashMap<String, u32>,
    tens_suffixed: HashMap<String, (u32, &'static str)>,
    /// name → power of ten
    multipliers: HashMap<String, usize>,
    multipliers_suffixed: HashMap<String, (usize, &'static str)>,
    preceding_prefixers: HashMap<&'static str, &'static str>,
    following_prefixers: HashMap<&'static str, &'static str>,
    words: std::collections::HashSet<String>,
    and_a_half: Regex,
    letter_digit: Regex,
    digit_letter: Regex,
    digit_suffix: Regex,
    cents: Regex,
    only_cents: Regex,
    one: Regex,
}

const ONES: [&str; 19] = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [(&str, u32); 8] = [
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("sixty", 60),
    ("seventy", 70),
    ("eighty", 80),
    ("ninety", 90),
];
const MULTIPLIERS: [(&str, usize); 12] = [
    ("hundred", 2),
    ("thousand", 3),
    ("million", 6),
    ("billion", 9),
    ("trillion", 12),
    ("quadrillion", 15),
    ("quintillion", 18),
    ("sextillion", 21),
    ("septillion", 24),
    ("octillion", 27),
    ("nonillion", 30),
    ("decillion", 33),
];
const SPECIALS: [&str; 4] = ["and", "double", "triple", "point"];
const PREFIXES: &str = "-+£€$¢";

impl Default for EnglishNumberNormalizer {
    fn default() -> Self {
        Self::new()
    }
}

impl EnglishNumberNormalizer {
    pub fn new() -> Self {
        let ones: HashMap<String, u32> = ONES.iter().enumerate().map(|(i, n)| (n.to_string(), i as u32 + 1)).collect();
        let mut ones_suffixed: HashMap<String, (u32, &str)> = HashMap::new();
        for (name, &v) in &ones {
            let plural = if name == "six" { "sixes".to_string() } else { format!("{name}s") };
            ones_suffixed.insert(plural, (v, "s"));
        }
        for (n, v, s) in
            [("zeroth", 0, "th"), ("first", 1, "st"), ("second", 2, "nd"), ("third", 3, "rd"), ("fifth", 5, "th")]
        {
            ones_suffixed.insert(n.into(), (v, s));
        }
        ones_suffixed.insert("twelfth".into(), (12, "th"));
        for (name, &v) in &ones {
            if v > 3 && v != 5 && v != 12 {
                let ordinal = format!("{name}{}", if name.ends_with('t') { "h" } else { "th" });
                ones_suffixed.insert(ordinal, (v, "th"));
            }
        }
        let tens: HashMap<String, u32> = TENS.iter().map(|(n, v)| (n.to_string(), *v)).collect();
        let mut tens_suffixed = HashMap::new();
        for (n, v) in TENS {
            tens_suffixed.insert(n.replace('y', "ies"), (v, "s"));
            tens_suffixed.insert(n.replace('y', "ieth"), (v, "th"));
        }
        let multipliers: HashMap<String, usize> = MULTIPLIERS.iter().map(|(n, p)| (n.to_string(), *p)).collect();
        let mut multipliers_suffixed = HashMap::new();
        for (n, p) in MULTIPLIERS {
            multipliers_suffixed.insert(format!("{n}s"), (p, "s"));
            multipliers_suffixed.insert(format!("{n}th"), (p, "th"));
        }
        let preceding_prefixers: HashMap<&str, &str> =
            [("minus", "-"), ("negative", "-"), ("plus", "+"), ("positive", "+")].into_iter().collect();
        let following_prefixers: HashMap<&str, &str> = [
            ("pound", "£"),
            ("pounds", "£"),
            ("euro", "€"),
            ("euros", "€"),
            ("dollar", "$"),
            ("dollars", "$"),
            ("cent", "¢"),
            ("cents", "¢"),
        ]
        .into_iter()
        .collect();
        let zeros = vec!["o", "oh", "zero"];
        let mut words = std::collections::HashSet::new();
        words.extend(zeros.iter().map(|s| s.to_string()));
        words.extend(ones.keys().cloned());
        words.extend(ones_suffixed.keys().cloned());
        words.extend(tens.keys().cloned());
        words.extend(tens_suffixed.keys().cloned());
        words.extend(multipliers.keys().cloned());
        words.extend(multipliers_suffixed.keys().cloned());
        words.extend(preceding_prefixers.keys().map(|s| s.to_string()));
        words.extend(following_prefixers.keys().map(|s| s.to_string()));
        words.extend(["per", "percent"].map(String::from));
        words.extend(SPECIALS.map(String::from));
        EnglishNumberNormalizer {
            zeros,
            ones,
            ones_suffixed,
            tens,
            tens_suffixed,
            multipliers,
            multipliers_suffixed,
            preceding_prefixers,
            following_prefixers,
            words,
            and_a_half: re(r"\band\s+a\s+half\b"),
            letter_digit: re(r"([a-z])([0-9])"),
            digit_letter: re(r"([0-9])([a-z])"),
            digit_suffix: re(r"([0-9])\s+(st|nd|rd|th|s)\b"),
            cents: re(r"([€£$])([0-9]+) (?:and )?¢([0-9]{1,2})\b"),
            only_cents: re(r"[€£$]0.([0-9]{1,2})\b"),
            one: re(r"\b1(s?)\b"),
        }
    }

    fn is_decimal_word(&self, w: &str) -> bool {
        self.ones.contains_key(w) || self.tens.contains_key(w) || self.zeros.contains(&w)
    }

    /// "<number> and a half" → "<number> point five"; spaces at digit/letter boundaries.
    fn preprocess(&self, s: &str) -> String {
        let segments: Vec<&str> = self.and_a_half.split(s).collect();
        let mut results: Vec<&str> = Vec::new();
        for (i, segment) in segments.iter().enumerate() {
            if segment.trim().is_empty() {
                continue;
            }
            results.push(segment);
            if i != segments.len() - 1 {
                let last_word = segment.split_whitespace().next_back().unwrap_or("");
                if self.is_decimal_word(last_word) || self.multipliers.contains_key(last_word) {
                    results.push("point five");
                } else {
                    results.push("and a half");
                }
            }
        }
        let s = results.join(" ");
        let s = self.letter_digit.replace_all(&s, "${1} ${2}");
        let s = self.digit_letter.replace_all(&s, "${1} ${2}");
        self.digit_suffix.replace_all(&s, "${1}${2}").into_owned()
    }

    /// english.py `EnglishNumberNormalizer.process_words`, line by line.
    fn process_words(&self, words: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut prefix: Option<String> = None;
        let mut value: Option<Value> = None;
        let mut skip = false;

        // Python's `output`: prefix the result, reset prefix and value.
        fn output(result: String, prefix: &mut Option<String>, value: &mut Option<Value>) -> String {
            *value = None;
            match prefix.take() {
                Some(p) => p + &result,
                None => result,
            }
        }
        macro_rules! emit {
            ($r:expr) => {{
                let r: String = $r;
                let o = output(r, &mut prefix, &mut value);
                out.push(o);
            }};
        }
        macro_rules! emit_value {
            () => {
                if let Some(v) = value.clone() {
                    emit!(v.text());
                }
            };
        }

        for i in 0..words.len() {
            let prev = if i > 0 { Some(words[i - 1]) } else { None };
            let current = words[i];
            let next = words.get(i + 1).copied();
            if skip {
                skip = false;
                continue;
            }
            let next_is_numeric = next.is_some_and(is_arabic_number);
            let next_in_words = next.is_some_and(|n| self.words.contains(n));
            let prev_in = |m: &dyn Fn(&str) -> bool| prev.is_some_and(m);
            let first = current.chars().next().unwrap();
            let has_prefix = PREFIXES.contains(first);
            let without_prefix = if has_prefix { &current[first.len_utf8()..] } else { current };

            if is_arabic_number(without_prefix) {
                // arabic numbers (potentially with signs and fractions)
                if let Some(v) = &value {
                    if let Value::Str(s) = v
                        && s.ends_with('.')
                    {
                        // concatenate decimals / ip address components
                        value = Some(Value::Str(format!("{s}{current}")));
                        continue;
                    }
                    emit_value!();
                }
                if has_prefix {
                    prefix = Some(first.to_string());
                }
                value = Some(match integer_times_power_of_ten(without_prefix, 0) {
                    Some(n) => Value::Int(n),
                    None => Value::Str(without_prefix.to_string()),
                });
            } else if !self.words.contains(current) {
                // non-numeric words
                emit_value!();
                emit!(current.to_string());
            } else if self.zeros.contains(&current) {
                value = Some(Value::Str(Value::text_or_empty(&value) + "0"));
            } else if let Some(&ones) = self.ones.get(current) {
                value = Some(match value.take() {
                    None => Value::Int(ones.into()),
                    Some(v) if matches!(v, Value::Str(_)) || prev_in(&|p| self.ones.contains_key(p)) => {
                        let t = v.text();
                        if prev_in(&|p| self.tens.contains_key(p)) && ones < 10 {
                            // replace the last zero with the digit
                            Value::Str(format!("{}{ones}", drop_last(&t)))
                        } else {
                            Value::Str(format!("{t}{ones}"))
                        }
                    }
                    Some(Value::Int(v)) => {
                        let base = if ones < 10 { 10u32 } else { 100 };
                        if &v % base == BigUint::ZERO { Value::Int(v + ones) } else { Value::Str(format!("{v}{ones}")) }
                    }
                    Some(Value::Str(_)) => unreachable!(),
                });
            } else if let Some(&(ones, suffix)) = self.ones_suffixed.get(current) {
                // ordinal or cardinal; yield the number right away
                let r = match value.clone() {
                    None => format!("{ones}{suffix}"),
                    Some(v) if matches!(v, Value::Str(_)) || prev_in(&|p| self.ones.contains_key(p)) => {
                        let t = v.text();
                        if prev_in(&|p| self.tens.contains_key(p)) && ones < 10 {
                            format!("{}{ones}{suffix}", drop_last(&t))
                        } else {
                            format!("{t}{ones}{suffix}")
                        }
                    }
                    Some(Value::Int(v)) => {
                        let base = if ones < 10 { 10u32 } else { 100 };
                        if &v % base == BigUint::ZERO {
                            format!("{}{suffix}", v + ones)
                        } else {
                            format!("{v}{ones}{suffix}")
                        }
                    }
                    Some(Value::Str(_)) => unreachable!(),
                };
                emit!(r);
                value = None;
            } else if let Some(&tens) = self.tens.get(current) {
                value = Some(match value.take() {
                    None => Value::Int(tens.into()),
                    Some(Value::Str(s)) => Value::Str(format!("{s}{tens}")),
                    Some(Value::Int(v)) => {
                        if &v % 100u32 == BigUint::ZERO {
                            Value::Int(v + tens)
                        } else {
                            Value::Str(format!("{v}{tens}"))
                        }
                    }
                });
            } else if let Some(&(tens, suffix)) = self.tens_suffixed.get(current) {
                // ordinal or cardinal; yield the number right away
                let r = match value.clone() {
                    None => format!("{tens}{suffix}"),
                    Some(Value::Str(s)) => format!("{s}{tens}{suffix}"),
                    Some(Value::Int(v)) => {
                        if &v % 100u32 == BigUint::ZERO {
                            format!("{}{suffix}", v + tens)
                        } else {
                            format!("{v}{tens}{suffix}")
                        }
                    }
                };
                emit!(r);
            } else if let Some(&power) = self.multipliers.get(current) {
                let multiplier = BigUint::from(10u32).pow(power as u32);
                match value.clone() {
                    None => value = Some(Value::Int(multiplier)),
                    Some(v) if is_str_or_zero(&v) => match integer_times_power_of_ten(&v.text(), power) {
                        Some(p) => value = Some(Value::Int(p)),
                        None => {
                            emit!(v.text());
                            value = Some(Value::Int(multiplier));
                        }
                    },
                    Some(Value::Int(v)) => value = Some(Value::Int(times_multiplier(&v, &multiplier))),
                    Some(Value::Str(_)) => unreachable!(),
                }
            } else if let Some(&(power, suffix)) = self.multipliers_suffixed.get(current) {
                let multiplier = BigUint::from(10u32).pow(power as u32);
                match value.clone() {
                    None => emit!(format!("{multiplier}{suffix}")),
                    Some(Value::Str(s)) => match integer_times_power_of_ten(&s, power) {
                        Some(p) => emit!(format!("{p}{suffix}")),
                        None => {
                            emit!(s);
                            emit!(format!("{multiplier}{suffix}"));
                        }
                    },
                    Some(Value::Int(v)) => {
                        let v = times_multiplier(&v, &multiplier);
                        emit!(format!("{v}{suffix}"));
                    }
                }
                value = None;
            } else if let Some(&p) = self.preceding_prefixers.get(current) {
                // apply prefix (positive, minus, etc.) if it precedes a number
                emit_value!();
                if next_in_words || next_is_numeric {
                    prefix = Some(p.to_string());
                } else {
                    emit!(current.to_string());
                }
            } else if let Some(&p) = self.following_prefixers.get(current) {
                // apply prefix (dollars, cents, etc.) only after a number
                if let Some(v) = value.clone() {
                    prefix = Some(p.to_string());
                    emit!(v.text());
                } else {
                    emit!(current.to_string());
                }
            } else if current == "per" || current == "percent" {
                // apply suffix symbols (percent -> '%')
                if let Some(v) = value.clone() {
                    if current == "per" {
                        if next == Some("cent") {
                            emit!(format!("{}%", v.text()));
                            skip = true;
                        } else {
                            emit!(v.text());
                            emit!(current.to_string());
                        }
                    } else {
                        emit!(format!("{}%", v.text()));
                    }
                } else {
                    emit!(current.to_string());
                }
            } else if SPECIALS.contains(&current) {
                if !next_in_words && !next_is_numeric {
                    // apply special handling only if the next word can be numeric
                    emit_value!();
                    emit!(current.to_string());
                } else if current == "and" {
                    // ignore "and" after hundreds, thousands, etc.
                    if !prev_in(&|p| self.multipliers.contains_key(p)) {
                        emit_value!();
                        emit!(current.to_string());
                    }
                } else if current == "double" || current == "triple" {
                    let n = next.unwrap_or("");
                    if self.ones.contains_key(n) || self.zeros.contains(&n) {
                        let repeats = if current == "double" { 2 } else { 3 };
                        let ones = self.ones.get(n).copied().unwrap_or(0);
                        value = Some(Value::Str(Value::text_or_empty(&value) + &ones.to_string().repeat(repeats)));
                        skip = true;
                    } else {
                        emit_value!();
                        emit!(current.to_string());
                    }
                } else if current == "point" && (next.is_some_and(|n| self.is_decimal_word(n)) || next_is_numeric) {
                    value = Some(Value::Str(Value::text_or_empty(&value) + "."));
                }
                // (a "point" before a number word that is not a digit is dropped, as in Python)
            }
        }
        if let Some(v) = value.clone() {
            emit!(v.text());
        }
        out
    }

    /// "$2 and ¢7" → "$2.07", "$0.5" → "¢5", and 1 → "one" for readability.
    fn postprocess(&self, s: &str) -> String {
        let s = self.cents.replace_all(s, |c: &Captures| {
            let cents: u32 = c[3].parse().unwrap();
            format!("{}{}.{cents:02}", &c[1], &c[2])
        });
        let s = self.only_cents.replace_all(&s, |c: &Captures| format!("¢{}", c[1].parse::<u32>().unwrap()));
        self.one.replace_all(&s, "one${1}").into_owned()
    }

    pub fn normalize(&self, s: &str) -> String {
        let s = self.preprocess(s);
        let words: Vec<&str> = s.split_whitespace().collect();
        let s = self.process_words(&words).join(" ");
        self.postprocess(&s)
    }
}

/// Python's `s[:-1]`.
fn drop_last(s: &str) -> &str {
    s.char_indices().next_back().map_or(s, |(i, _)| &s[..i])
}

fn is_str_or_zero(v: &Value) -> bool {
    match v {
        Value::Str(_) => true,
        Value::Int(i) => *i == BigUint::ZERO,
    }
}

/// `value // 1000 * 1000 + value % 1000 * multiplier`: "two thousand five hundred" keeps the
/// thousands and multiplies the rest.
fn times_multiplier(v: &BigUint, multiplier: &BigUint) -> BigUint {
    let thousand = BigUint::from(1000u32);
    let before = v / &thousand * &thousand;
    let residual = v % &thousand;
    before + residual * multiplier
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_examples() {
        assert_eq!(basic("  Hello, World!  "), "hello world");
        assert_eq!(basic("Don't stop [noise] (laughs) now."), "don t stop now");
        assert_eq!(basic("Café  naïve\tß"), "café naïve ß");
        assert_eq!(basic(""), "");
        assert_eq!(basic("?!"), "");
    }

    #[test]
    fn english_examples() {
        assert_eq!(english("Mr. Smith won't pay twenty-one dollars."), "mister smith will not pay $21");
        assert_eq!(english("I've got one hundred and five colours"), "i have got 105 colors");
        assert_eq!(english("It's fifty per cent, um, OK?"), "it is 50% ok");
        assert_eq!(english("the nineteen sixties"), "the 1960s");
        assert_eq!(english("Café [music]"), "cafe");
        assert_eq!(english(""), "");
    }

    #[test]
    fn normalizer_serde_names() {
        for (n, s) in
            [(Normalizer::None, "\"none\""), (Normalizer::Basic, "\"basic\""), (Normalizer::English, "\"english\"")]
        {
            assert_eq!(serde_json::to_string(&n).unwrap(), s);
            assert_eq!(serde_json::from_str::<Normalizer>(s).unwrap(), n);
        }
    }
}
